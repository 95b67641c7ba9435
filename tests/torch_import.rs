//! PyTorch checkpoints read without Python: files in torch.save's zip format written by
//! tools/torch_fixtures.py (CPython's own pickler and zipfile, torch's record layout and tensor
//! reduction) give back the tensors and values it recorded in expected.json, through the reader
//! and through `import-torch`; damaged or hostile files fail by name.

mod common;
#[path = "common/torch_writer.rs"]
mod torch_writer;

use std::path::{Path, PathBuf};

use clover_engine::weights::torch::{TorchDType, TorchFile};
use common::engine;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    common::fixture("torch").join(name)
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

/// Little-endian bytes of `dtype` → f64 values (integers and booleans exactly).
fn decode(dtype: &str, bytes: &[u8]) -> Vec<f64> {
    match dtype {
        "F32" => bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "F16" => bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f64()).collect(),
        "BF16" => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f64()).collect(),
        "I64" => bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64).collect(),
        "BOOL" => bytes.iter().map(|&b| b as f64).collect(),
        other => panic!("no decoder for {other}"),
    }
}

fn expected_values(e: &Value) -> Vec<f64> {
    e["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap_or_else(|| v.as_bool().unwrap() as u8 as f64))
        .collect()
}

fn dtype_name(d: TorchDType) -> &'static str {
    match d {
        TorchDType::F32 => "F32",
        TorchDType::F16 => "F16",
        TorchDType::BF16 => "BF16",
        TorchDType::I64 => "I64",
        TorchDType::Bool => "BOOL",
        other => panic!("the fixtures hold no {other:?}"),
    }
}

#[test]
fn reader_gives_the_recorded_tensors_views_included() {
    let want = expected();
    for file in ["state_dict.bin", "data_0.ckpt"] {
        let t = TorchFile::open(&fixture(file)).unwrap();
        let tensors = t.tensors().unwrap();
        let want = want[file].as_array().unwrap();
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, want.iter().map(|e| e["name"].as_str().unwrap()).collect::<Vec<_>>(), "{file}: file order");
        for ((name, tensor), e) in tensors.iter().zip(want) {
            let dtype = dtype_name(tensor.storage.dtype);
            assert_eq!(dtype, e["dtype"], "{file}: {name}");
            let shape: Vec<usize> =
                e["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            assert_eq!(tensor.shape, shape, "{file}: {name}");
            assert_eq!(decode(dtype, &t.bytes(name, tensor).unwrap()), expected_values(e), "{file}: {name}");
        }
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Reads a safetensors file back with the `safetensors` crate: name → (dtype, shape, values).
fn read_back(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<f64>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = format!("{:?}", view.dtype());
            let values = decode(&dtype, view.data());
            (name, dtype, view.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn import_torch_converts_a_file_a_folder_and_shards() {
    let root = common::temp_dir("import-torch");
    let want = expected();
    let check = |out: &Path, files: &[&str]| {
        let got = read_back(&out.join("model.safetensors"));
        let mut names = Vec::new();
        for file in files {
            for e in want[*file].as_array().unwrap() {
                let name = e["name"].as_str().unwrap();
                names.push(name);
                let (_, dtype, shape, values) = got.iter().find(|g| g.0 == name).unwrap_or_else(|| panic!("{name}"));
                assert_eq!(dtype, e["dtype"].as_str().unwrap(), "{name}");
                assert_eq!(shape.len(), e["shape"].as_array().unwrap().len(), "{name}");
                assert_eq!(values, &expected_values(e), "{name}");
            }
        }
        assert_eq!(got.len(), names.len(), "no tensor more");
    };

    // A single file.
    let out = root.join("from-file");
    let run = engine(&["import-torch", "--from", &s(&fixture("state_dict.bin")), "--out", &s(&out)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    check(&out, &["state_dict.bin"]);

    // A released head's folder: pytorch_model.bin beside config.json, which is copied.
    let head = root.join("head");
    std::fs::create_dir_all(&head).unwrap();
    std::fs::copy(fixture("state_dict.bin"), head.join("pytorch_model.bin")).unwrap();
    let config = clover_engine::model::random::tiny_llama_config(64).to_string();
    std::fs::write(head.join("config.json"), &config).unwrap();
    let out = root.join("from-folder");
    let run = engine(&["import-torch", "--from", &s(&head), "--out", &s(&out)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    check(&out, &["state_dict.bin"]);
    assert_eq!(std::fs::read_to_string(out.join("config.json")).unwrap(), config);
    // The folder's own error names the file the engine could not read before.
    let run = engine(&["generate", "--model", &s(&head), "--prompt", "x"]);
    common::assert_clean_error(&run, &["pytorch_model.bin", "import-torch"]);

    // Shards named by pytorch_model.bin.index.json, each read once.
    let sharded = root.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(fixture("state_dict.bin"), sharded.join("part-1.bin")).unwrap();
    std::fs::copy(fixture("data_0.ckpt"), sharded.join("part-2.bin")).unwrap();
    let index = serde_json::json!({"weight_map": {"fc.weight": "part-1.bin", "norm.weight": "part-1.bin", "input_ids": "part-2.bin"}});
    std::fs::write(sharded.join("pytorch_model.bin.index.json"), index.to_string()).unwrap();
    let out = root.join("from-shards");
    let run = engine(&["import-torch", "--from", &s(&sharded), "--out", &s(&out)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    check(&out, &["state_dict.bin", "data_0.ckpt"]);
    assert!(!out.join("pytorch_model.bin.index.json").exists(), "the pickles' index is not copied");

    // The same tensor names in two shards are refused, naming the second file and the tensor.
    let twice = root.join("twice");
    std::fs::create_dir_all(&twice).unwrap();
    std::fs::copy(fixture("state_dict.bin"), twice.join("a.bin")).unwrap();
    std::fs::copy(fixture("state_dict.bin"), twice.join("b.bin")).unwrap();
    let index = serde_json::json!({"weight_map": {"fc.weight": "a.bin", "tied.weight": "b.bin"}});
    std::fs::write(twice.join("pytorch_model.bin.index.json"), index.to_string()).unwrap();
    let run = engine(&["import-torch", "--from", &s(&twice), "--out", &s(&root.join("twice-out"))]);
    common::assert_clean_error(&run, &["b.bin", "fc.weight", "already"]);
    assert!(!root.join("twice-out").join("model.safetensors").exists());
}

#[test]
fn damaged_foreign_and_hostile_files_fail_by_name() {
    let root = common::temp_dir("import-torch-bad");
    let out = |name: &str| s(&root.join(name));
    let bytes = std::fs::read(fixture("state_dict.bin")).unwrap();
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        ("cut.bin", bytes[..bytes.len() / 2].to_vec(), vec!["cut.bin", "zip"]),
        ("text.bin", b"hello, not a checkpoint".to_vec(), vec!["text.bin", "not a PyTorch zip archive"]),
        ("legacy.bin", [&[0x80u8, 0x02, 0x8a, 0x0a][..], &[0u8; 32]].concat(), vec!["legacy.bin", "legacy format"]),
        ("empty.bin", Vec::new(), vec!["empty.bin"]),
    ];
    for (name, data, needles) in cases {
        let path = root.join(name);
        std::fs::write(&path, data).unwrap();
        let run = engine(&["import-torch", "--from", &s(&path), "--out", &out(&format!("{name}-out"))]);
        common::assert_clean_error(&run, &needles);
        assert!(!root.join(format!("{name}-out")).join("model.safetensors").exists(), "{name}: nothing written");
    }
    // Deflated records (torch.save stores them as they are) are refused by record.
    let run = engine(&["import-torch", "--from", &s(&fixture("deflated.ckpt")), "--out", &out("deflated-out")]);
    common::assert_clean_error(&run, &["deflated.ckpt", "data_0/data.pkl", "compressed"]);
    // A pickle that would call `print` under torch.load is refused, naming the call; it runs nothing.
    let run = engine(&["import-torch", "--from", &s(&fixture("hostile.bin")), "--out", &out("hostile-out")]);
    common::assert_clean_error(&run, &["hostile.bin", "data.pkl", "print`"]);
    assert!(!root.join("hostile-out").exists(), "the folder made for the output is removed");
    // An --out that holds something is refused before anything is read.
    let run =
        engine(&["import-torch", "--from", &s(&fixture("state_dict.bin")), "--out", &s(&common::fixture("torch"))]);
    common::assert_clean_error(&run, &["--out", "not empty"]);
}

/// The released-checkpoint path end to end: the shipped Clover-2 head written as a
/// `pytorch_model.bin` (bf16 storages, the reference's tensor names) beside its config.json and
/// draft_vocab.json, converted by `import-torch`, gives back the same tensors, bit for bit, and
/// drafts exactly as the shipped head.
#[test]
fn a_head_shipped_as_pytorch_model_bin_converts_and_drafts_unchanged() {
    use clover_engine::backend::cpu::CpuBackend;
    use clover_engine::draft::{load_head, DraftKind};
    use clover_engine::model::Llama;
    use torch_writer::{save, Data};

    let Some(model_dir) = common::default_model() else { return };
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/smollm2-135m-instruct/clover2");
    let bytes = std::fs::read(shipped.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let items: Vec<(&str, Vec<usize>, Data)> = names
        .iter()
        .map(|name| {
            let view = st.tensor(name).unwrap();
            assert_eq!(view.dtype(), safetensors::Dtype::BF16, "{name}");
            let bits = view.data().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
            (name.as_str(), view.shape().to_vec(), Data::Bf16Bits(bits))
        })
        .collect();
    let root = common::temp_dir("import-torch-head");
    let released = root.join("released");
    std::fs::create_dir_all(&released).unwrap();
    save(&released.join("pytorch_model.bin"), "archive", &items);
    for file in ["config.json", "draft_vocab.json"] {
        std::fs::copy(shipped.join(file), released.join(file)).unwrap();
    }
    let out = root.join("converted");
    let run = engine(&["import-torch", "--from", &s(&released), "--out", &s(&out)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let converted = std::fs::read(out.join("model.safetensors")).unwrap();
    let back = safetensors::SafeTensors::deserialize(&converted).unwrap();
    assert_eq!(back.len(), names.len());
    for name in &names {
        let (a, b) = (st.tensor(name).unwrap(), back.tensor(name).unwrap());
        assert!(a.dtype() == b.dtype() && a.shape() == b.shape() && a.data() == b.data(), "{name}");
    }
    let model = Llama::load(&model_dir, CpuBackend).unwrap();
    let mut original = load_head(DraftKind::Clover2, &shipped, &model).unwrap();
    let mut imported = load_head(DraftKind::Clover2, &out, &model).unwrap();
    assert_eq!(imported.draft_vocab(), original.draft_vocab(), "draft_vocab.json travels with it");
    assert_eq!(common::draft_rows(imported.as_mut(), &model), common::draft_rows(original.as_mut(), &model));
}
