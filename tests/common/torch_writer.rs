//! Writes a dict of tensors in torch.save's zip format, as tools/torch_fixtures.py lays it out
//! (which tests/torch_import.rs checks the reader against): for tests that need such files made
//! from values computed in the test, such as ge_data dumps of a tiny model's features.

#![allow(dead_code)]

use std::path::Path;

pub enum Data {
    F32(Vec<f32>),
    F16(Vec<f32>),
    /// bf16 values as their bit patterns (kept exactly).
    Bf16Bits(Vec<u16>),
    I64(Vec<i64>),
}

impl Data {
    fn storage_class(&self) -> &'static str {
        match self {
            Data::F32(_) => "FloatStorage",
            Data::F16(_) => "HalfStorage",
            Data::Bf16Bits(_) => "BFloat16Storage",
            Data::I64(_) => "LongStorage",
        }
    }

    fn len(&self) -> usize {
        match self {
            Data::F32(v) | Data::F16(v) => v.len(),
            Data::Bf16Bits(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
            Data::Bf16Bits(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend((s.len() as u32).to_le_bytes());
    out.extend(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: usize) {
    out.push(b'J');
    out.extend((v as i32).to_le_bytes());
}

/// The pickle torch.save writes for `{name: tensor, …}` (protocol 2, one storage per tensor).
fn pickle(items: &[(&str, Vec<usize>, Data)]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}', b'('];
    for (key, (name, shape, data)) in items.iter().enumerate() {
        text(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
        text(&mut p, "storage");
        p.extend(format!("ctorch\n{}\n", data.storage_class()).as_bytes());
        text(&mut p, &key.to_string());
        text(&mut p, "cpu");
        int(&mut p, data.len());
        p.extend(b"tQ");
        int(&mut p, 0);
        p.push(b'(');
        shape.iter().for_each(|&d| int(&mut p, d));
        p.extend(b"t(");
        let mut stride: Vec<usize> =
            shape.iter().rev().scan(1, |acc, &d| Some(std::mem::replace(acc, *acc * d))).collect();
        stride.reverse();
        stride.iter().for_each(|&s| int(&mut p, s));
        p.extend(b"t\x89ccollections\nOrderedDict\n)RtR");
    }
    p.extend(b"u.");
    p
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Writes `items` to `path` as torch.save would, records under `archive/`.
pub fn save(path: &Path, archive: &str, items: &[(&str, Vec<usize>, Data)]) {
    let mut records =
        vec![(format!("{archive}/data.pkl"), pickle(items)), (format!("{archive}/byteorder"), b"little".to_vec())];
    for (key, (_, _, data)) in items.iter().enumerate() {
        records.push((format!("{archive}/data/{key}"), data.bytes()));
    }
    let (mut zip, mut directory) = (Vec::new(), Vec::new());
    for (name, data) in &records {
        let offset = zip.len() as u32;
        let header = |sig: u32| -> Vec<u8> {
            let mut h = sig.to_le_bytes().to_vec();
            h.extend([20, 0, 0, 0, 0, 0, 0, 0, 0x21, 0]);
            h.extend(crc32(data).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((data.len() as u32).to_le_bytes());
            h.extend((name.len() as u16).to_le_bytes());
            h.extend(0u16.to_le_bytes());
            h
        };
        zip.extend(header(0x0403_4b50));
        zip.extend(name.as_bytes());
        zip.extend(data);
        // The central entry has "version made by" before the local header's fields.
        let mut entry = 0x0201_4b50u32.to_le_bytes().to_vec();
        entry.extend([20, 0]);
        entry.extend(&header(0)[4..]);
        entry.extend([0u8; 10]); // comment length, disk, internal and external attributes
        entry.extend(offset.to_le_bytes());
        entry.extend(name.as_bytes());
        directory.extend(entry);
    }
    let start = zip.len() as u32;
    zip.extend(&directory);
    zip.extend(0x0605_4b50u32.to_le_bytes());
    zip.extend([0u8; 4]);
    zip.extend((records.len() as u16).to_le_bytes());
    zip.extend((records.len() as u16).to_le_bytes());
    zip.extend((directory.len() as u32).to_le_bytes());
    zip.extend(start.to_le_bytes());
    zip.extend(0u16.to_le_bytes());
    std::fs::write(path, zip).unwrap();
}
