//! The entries of a `torch.save` archive: a zip whose records are stored uncompressed (PyTorch's
//! writer never compresses them, and aligns each so tensors can be memory-mapped). Only what
//! such an archive uses is read: the central directory (zip64 too, for files past 4 GiB) and the
//! local headers it points to.

use std::ops::Range;

/// A record's name and where its bytes lie in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub data: Range<usize>,
    /// The compression method of a record that is not stored as it is (method 0): its bytes
    /// cannot be read in place. TorchScript archives compress their code records; the reader
    /// refuses only a compressed record it needs.
    pub compressed: Option<u16>,
}

const LOCAL_HEADER: u32 = 0x0403_4b50;
const CENTRAL_HEADER: u32 = 0x0201_4b50;
const END_OF_DIRECTORY: u32 = 0x0605_4b50;
const ZIP64_LOCATOR: u32 = 0x0706_4b50;
const ZIP64_END: u32 = 0x0606_4b50;
/// The extra field holding the 64-bit sizes and offset a zip64 entry leaves as 0xFFFFFFFF.
const ZIP64_EXTRA: u16 = 0x0001;

fn field<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    field(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    field(b, at).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    field(b, at).map(u64::from_le_bytes)
}

/// Every record of the archive in `bytes`, in directory order. Errors say what is wrong in
/// words; the caller names the file.
pub fn entries(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let short = || "the zip directory is cut short".to_string();
    // The end record sits in the last 22 bytes plus a comment of up to 64 KiB.
    let earliest = bytes.len().saturating_sub(22 + 0xFFFF);
    let end = (earliest..=bytes.len().saturating_sub(22))
        .rev()
        .find(|&at| u32_at(bytes, at) == Some(END_OF_DIRECTORY))
        .ok_or("not a zip archive (no end-of-directory record)")?;
    let mut count = u16_at(bytes, end + 10).ok_or_else(short)? as u64;
    let mut dir_offset = u32_at(bytes, end + 16).ok_or_else(short)? as u64;
    if end >= 20 && u32_at(bytes, end - 20) == Some(ZIP64_LOCATOR) {
        let at = u64_at(bytes, end - 20 + 8).ok_or_else(short)? as usize;
        if u32_at(bytes, at) != Some(ZIP64_END) {
            return Err("the zip64 end record is not where its locator says".into());
        }
        count = u64_at(bytes, at + 32).ok_or_else(short)?;
        dir_offset = u64_at(bytes, at + 48).ok_or_else(short)?;
    }
    let mut at = usize::try_from(dir_offset).map_err(|_| short())?;
    let mut out = Vec::new();
    for _ in 0..count {
        if u32_at(bytes, at) != Some(CENTRAL_HEADER) {
            return Err(format!("no directory entry at byte {at}"));
        }
        let method = u16_at(bytes, at + 10).ok_or_else(short)?;
        let mut size = u32_at(bytes, at + 24).ok_or_else(short)? as u64;
        let name_len = u16_at(bytes, at + 28).ok_or_else(short)? as usize;
        let extra_len = u16_at(bytes, at + 30).ok_or_else(short)? as usize;
        let comment_len = u16_at(bytes, at + 32).ok_or_else(short)? as usize;
        let mut local = u32_at(bytes, at + 42).ok_or_else(short)? as u64;
        let name_bytes = bytes.get(at + 46..at + 46 + name_len).ok_or_else(short)?;
        let name = String::from_utf8_lossy(name_bytes).into_owned();
        let extra = bytes.get(at + 46 + name_len..at + 46 + name_len + extra_len).ok_or_else(short)?;
        let mut compressed = u32_at(bytes, at + 20).ok_or_else(short)? as u64;
        zip64_fields(extra, &mut size, &mut compressed, &mut local);
        if method == 0 && compressed != size {
            return Err(format!("record {name} is stored with two different sizes ({compressed} and {size})"));
        }
        // A compressed record's data is its compressed bytes.
        let stored = method == 0;
        let size = if stored { size } else { compressed };
        let local = usize::try_from(local).map_err(|_| short())?;
        if u32_at(bytes, local) != Some(LOCAL_HEADER) {
            return Err(format!("record {name}: no local header at byte {local}"));
        }
        let local_name = u16_at(bytes, local + 26).ok_or_else(short)? as usize;
        let local_extra = u16_at(bytes, local + 28).ok_or_else(short)? as usize;
        let start = local + 30 + local_name + local_extra;
        let stop = usize::try_from(size).ok().and_then(|s| start.checked_add(s)).filter(|&s| s <= bytes.len());
        let stop = stop.ok_or_else(|| format!("record {name} runs past the end of the file"))?;
        out.push(Entry { name, data: start..stop, compressed: (!stored).then_some(method) });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

/// Replaces the 32-bit fields a zip64 entry saturates with the values of its extra field, in the
/// order the format lists them (size, compressed size, local header offset).
fn zip64_fields(extra: &[u8], size: &mut u64, compressed: &mut u64, offset: &mut u64) {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let (id, len) = (u16_at(extra, at).unwrap_or(0), u16_at(extra, at + 2).unwrap_or(0) as usize);
        if id == ZIP64_EXTRA {
            let mut field = at + 4;
            for value in [&mut *size, &mut *compressed, &mut *offset] {
                if *value == u32::MAX as u64 {
                    if let Some(v) = u64_at(extra, field) {
                        *value = v;
                    }
                    field += 8;
                }
            }
        }
        at += 4 + len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-record archive in the zip64 form PyTorch's writer uses past 4 GiB: the directory
    /// entry's size and offset saturated to 0xFFFFFFFF with the real values in its extra field,
    /// and the end record pointing through a zip64 locator.
    #[test]
    fn zip64_directory_and_end_records() {
        let (name, data) = (b"archive/data/0", b"0123456789");
        let mut z = Vec::new();
        // Local header: signature, version, flags, method 0, time, date, crc, sizes, name, extra.
        z.extend(LOCAL_HEADER.to_le_bytes());
        z.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend([0u8; 4]);
        z.extend((data.len() as u32).to_le_bytes());
        z.extend((data.len() as u32).to_le_bytes());
        z.extend((name.len() as u16).to_le_bytes());
        z.extend(3u16.to_le_bytes());
        z.extend(name);
        z.extend([7, 7, 7]); // an extra field the reader must skip
        let start = z.len();
        z.extend(data);
        let directory = z.len();
        let extra: Vec<u8> = [ZIP64_EXTRA.to_le_bytes().to_vec(), 24u16.to_le_bytes().to_vec()]
            .concat()
            .into_iter()
            .chain((data.len() as u64).to_le_bytes())
            .chain((data.len() as u64).to_le_bytes())
            .chain(0u64.to_le_bytes())
            .collect();
        z.extend(CENTRAL_HEADER.to_le_bytes());
        z.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend([0u8; 4]);
        z.extend(u32::MAX.to_le_bytes()); // compressed size
        z.extend(u32::MAX.to_le_bytes()); // size
        z.extend((name.len() as u16).to_le_bytes());
        z.extend((extra.len() as u16).to_le_bytes());
        z.extend([0u8; 6]); // comment length, disk, internal attributes
        z.extend([0u8; 4]); // external attributes
        z.extend(u32::MAX.to_le_bytes()); // local header offset
        z.extend(name);
        z.extend(&extra);
        let zip64_end = z.len();
        z.extend(ZIP64_END.to_le_bytes());
        z.extend(44u64.to_le_bytes());
        z.extend([45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend(1u64.to_le_bytes());
        z.extend(1u64.to_le_bytes());
        z.extend(((zip64_end - directory) as u64).to_le_bytes());
        z.extend((directory as u64).to_le_bytes());
        z.extend(ZIP64_LOCATOR.to_le_bytes());
        z.extend(0u32.to_le_bytes());
        z.extend((zip64_end as u64).to_le_bytes());
        z.extend(1u32.to_le_bytes());
        z.extend(END_OF_DIRECTORY.to_le_bytes());
        z.extend([0xFF; 4]);
        z.extend(0xFFFFu16.to_le_bytes());
        z.extend(0xFFFFu16.to_le_bytes());
        z.extend(u32::MAX.to_le_bytes());
        z.extend(u32::MAX.to_le_bytes());
        z.extend(0u16.to_le_bytes());
        let got = entries(&z).unwrap();
        assert_eq!(got, [Entry { name: "archive/data/0".into(), data: start..start + data.len(), compressed: None }]);
        assert!(entries(&z[..z.len() - 30]).is_err(), "a cut end record");
    }
}
