use super::test_writer::{scratch_dir, strings, GgufBuilder};
use super::*;

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

fn open_bytes(test: &str, bytes: &[u8]) -> Result<GgufFile> {
    let path = scratch_dir(test).join("model.gguf");
    std::fs::write(&path, bytes).expect("write test file");
    GgufFile::open(path)
}

/// Q8_0: d = 0.5, q[i] = i − 16.
fn q8_0_block() -> Vec<u8> {
    let mut b = f16_bytes(0.5).to_vec();
    b.extend((0..32).map(|i| (i as i8 - 16) as u8));
    b
}

/// Q4_0: d = 2, qs[j] = j (low nibble) | (15 − j) << 4.
fn q4_0_block() -> Vec<u8> {
    let mut b = f16_bytes(2.0).to_vec();
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b
}

/// Q4_1: d = 0.5, m = −1, same nibbles as Q4_0.
fn q4_1_block() -> Vec<u8> {
    let mut b = f16_bytes(0.5).to_vec();
    b.extend(f16_bytes(-1.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    b
}

fn all_types_file() -> Vec<u8> {
    let mut b = GgufBuilder::default();
    b.alignment(64)
        .kv("general.architecture", GgufValue::String("llama".into()))
        .kv("test.f32", GgufValue::F32(1.5))
        .kv("test.u64", GgufValue::U64(7))
        .kv("test.tokens", strings(&["a", "b c", "ü"]))
        .kv("test.types", GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-3)]))
        .f32_tensor("f32", &[2], &[1.25, -3.0])
        .tensor("f16", &[2], 1, [f16_bytes(0.5), f16_bytes(-2.0)].concat())
        .tensor("bf16", &[2], 30, [bf16::from_f32(3.0).to_le_bytes(), bf16::from_f32(-0.125).to_le_bytes()].concat())
        .tensor("q8_0", &[32], 8, q8_0_block())
        .tensor("q4_0", &[32], 2, q4_0_block())
        .tensor("q4_1", &[32, 2], 3, [q4_1_block(), q4_1_block()].concat());
    b.build()
}

fn dequant(g: &GgufFile, name: &str) -> Vec<f32> {
    g.tensor_to_f32(g.tensor(name).expect("tensor present")).expect("dequantize")
}

#[test]
fn dequantizes_every_block_type() {
    let g = open_bytes("dequant", &all_types_file()).expect("open");
    assert_eq!(g.version, 3);
    assert_eq!(g.data_start % 64, 0);
    assert_eq!(dequant(&g, "f32"), [1.25, -3.0]);
    assert_eq!(dequant(&g, "f16"), [0.5, -2.0]);
    assert_eq!(dequant(&g, "bf16"), [3.0, -0.125]);

    let q8 = dequant(&g, "q8_0");
    assert_eq!((q8.len(), q8[0], q8[1], q8[16], q8[31]), (32, -8.0, -7.5, 0.0, 7.5));

    // x[j] = 2·(j − 8), x[j+16] = 2·((15 − j) − 8)
    let q4 = dequant(&g, "q4_0");
    assert_eq!((q4.len(), q4[0], q4[3], q4[15], q4[16], q4[31]), (32, -16.0, -10.0, 14.0, 14.0, -16.0));

    // x[j] = 0.5·j − 1, x[j+16] = 0.5·(15 − j) − 1, for both blocks
    let q41 = dequant(&g, "q4_1");
    assert_eq!(q41.len(), 64);
    assert_eq!((q41[0], q41[5], q41[15], q41[16], q41[31]), (-1.0, 1.5, 6.5, 6.5, -1.0));
    assert_eq!(q41[32..], q41[..32]);
}

#[test]
fn typed_metadata_getters() {
    let g = open_bytes("getters", &all_types_file()).expect("open");
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_f32("test.f32").unwrap(), 1.5);
    assert_eq!(g.get_u32("test.u64").unwrap(), 7);
    assert_eq!(g.get_str_array("test.tokens").unwrap(), ["a", "b c", "ü"]);
    assert_eq!(g.get_i32_array("test.types").unwrap(), [1, -3]);
    let missing = g.get_u32("llama.block_count").unwrap_err().to_string();
    assert!(missing.contains("llama.block_count") && missing.contains("missing"), "{missing}");
    let wrong = g.get_u32("general.architecture").unwrap_err().to_string();
    assert!(wrong.contains("general.architecture") && wrong.contains("string"), "{wrong}");
    assert!(g.get_str_array("test.types").is_err());
}

#[test]
fn unknown_type_id_names_tensor_and_id() {
    let mut b = GgufBuilder::default();
    b.tensor("blk.0.attn_q.weight", &[256], 12, vec![0; 144]);
    let err = open_bytes("unknown_type", &b.build()).err().expect("must fail").to_string();
    assert!(err.contains("blk.0.attn_q.weight") && err.contains("12"), "{err}");
}

#[test]
fn every_truncation_is_a_clean_error() {
    let full = all_types_file();
    assert!(open_bytes("truncated", &full).is_ok());
    for len in 0..full.len() {
        assert!(open_bytes("truncated", &full[..len]).is_err(), "prefix of {len} bytes opened");
    }
    let err = open_bytes("truncated", &full[..full.len() - 1]).err().expect("must fail").to_string();
    assert!(err.contains("q4_1") && err.contains("beyond the end"), "{err}");
}

#[test]
fn rejects_bad_magic_version_and_block_misfit() {
    let mut bytes = all_types_file();
    bytes[4] = 1;
    let err = open_bytes("version", &bytes).err().expect("v1").to_string();
    assert!(err.contains("version") && !err.contains("big-endian"), "{err}");
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    let err = open_bytes("big-endian", &bytes).err().expect("big-endian").to_string();
    assert!(err.contains("big-endian"), "{err}");
    bytes[0] = b'X';
    assert!(open_bytes("magic", &bytes).is_err());

    let mut b = GgufBuilder::default();
    b.tensor("q8", &[16, 2], 8, vec![0; 34]);
    let err = open_bytes("misfit", &b.build()).err().expect("row of 16 in Q8_0").to_string();
    assert!(err.contains("q8") && err.contains("block size"), "{err}");
}
