//! Which tensor of a safetensors header is wrong, when the `safetensors` crate's own check says
//! only that one is (`TensorInvalidInfo`) or names the tensor after a gap (`InvalidOffset`).

use serde_json::Value;

/// The first tensor whose entry does not fit the file, and why: data past the end, a byte
/// length that disagrees with its dtype and shape, or data that does not start where the
/// previous tensor's ends. None when every entry checks out (or the header cannot be read).
pub fn locate_problem(file: &[u8]) -> Option<(String, String)> {
    let header_len = u64::from_le_bytes(file.get(..8)?.try_into().ok()?) as usize;
    let header: Value = serde_json::from_slice(file.get(8..8usize.checked_add(header_len)?)?).ok()?;
    let data_len = file.len() - 8 - header_len;
    let mut spans = Vec::new();
    for (name, entry) in header.as_object()?.iter().filter(|(name, _)| *name != "__metadata__") {
        let offsets = entry.get("data_offsets")?.as_array()?;
        let (begin, end) = (offsets.first()?.as_u64()? as usize, offsets.get(1)?.as_u64()? as usize);
        if end > data_len || begin > end {
            return Some((name.clone(), format!("data offsets {begin}..{end} outside the {data_len} data bytes")));
        }
        // Checked products: this runs on headers already known to be wrong, shapes included.
        let numel = entry.get("shape")?.as_array()?.iter().try_fold(1u64, |n, d| n.checked_mul(d.as_u64()?))?;
        if let Some(size) = entry.get("dtype").and_then(Value::as_str).and_then(dtype_bytes) {
            if numel.checked_mul(size) != Some((end - begin) as u64) {
                return Some((
                    name.clone(),
                    format!(
                        "{numel} values of {size} bytes, but data offsets {begin}..{end} hold {} bytes",
                        end - begin
                    ),
                ));
            }
        }
        spans.push((begin, end, name));
    }
    spans.sort();
    let mut at = 0;
    for (begin, end, name) in spans {
        if begin != at {
            return Some((
                name.clone(),
                format!("its data starts at byte {begin}, where the previous tensor ends at {at}"),
            ));
        }
        at = end;
    }
    None
}

fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data_len: usize) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.resize(bytes.len() + data_len, 0);
        bytes
    }

    #[test]
    fn names_the_tensor_at_fault() {
        let ok = r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[8,12]}}"#;
        assert_eq!(locate_problem(&file(ok, 12)), None);
        let shape = ok.replace(r#""shape":[2],"data_offsets":[8,12]"#, r#""shape":[3],"data_offsets":[8,12]"#);
        assert_eq!(locate_problem(&file(&shape, 12)).unwrap().0, "b");
        let past_end = ok.replace("[0,8]", "[40,48]");
        let (name, why) = locate_problem(&file(&past_end, 12)).unwrap();
        assert!(name == "a" && why.contains("outside"), "{name}: {why}");
        let gap = ok.replace("[8,12]", "[10,14]");
        assert_eq!(locate_problem(&file(&gap, 14)).unwrap().0, "b");
    }
}
