//! Issue 26: the engine's readers of outside bytes (torch zip and legacy checkpoints with their
//! pickles, safetensors files) given thousands of seeded damaged inputs end in `Ok` or a clean
//! `Err`: no panic, no allocation over the cap.

use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use vlmix_engine::adamw::{AdamW, AdamWConfig};
use vlmix_engine::checkpoint::{load_checkpoint, save_checkpoint, TrainState};
use vlmix_engine::params::{ParamFlags, ParamId, ParamStore};
use vlmix_engine::safetensors_io::SafetensorsFile;
use vlmix_engine::torch_file::read_state_dict;
use vlmix_engine::Cpu;
use vlmix_mutation::{byte_mutants, check, json_mutants, scratch_root, CappedAlloc, Mutant, Rng};

/// Every input is at most a few KiB: a reader asking for more trusted a declared size.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc { cap: 64 << 20 };

/// Inputs per reader: 1,500 in the test suite, more under scripts/fuzz.sh.
fn per_reader() -> usize {
    vlmix_mutation::per_reader(1500)
}

/// A scratch file the readers open by path, removed with its directory on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = scratch_root().join(format!("vlmix-mutation-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The object pickle of a state dict {"w": a (2, 3) float tensor stored transposed in storage "7"}
/// (protocol 2, as torch.save writes it), and the legacy file's other pickles.
const OBJECT: &[u8] = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wq\x02ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05X\x01\x00\x00\x007q\x06X\x03\x00\x00\x00cpuq\x07K\x06NtQK\x00K\x02K\x03\x86K\x01K\x02\x86\x89ccollections\nOrderedDict\n)Rtq\x08Rq\x09s.";
const MAGIC: &[u8] = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.";
const PROTOCOL: &[u8] = b"\x80\x02M\xe9\x03.";
const SYS_INFO: &[u8] = b"\x80\x02}q\x00X\x0d\x00\x00\x00little_endianq\x01\x88s.";
const KEYS: &[u8] = b"\x80\x02]q\x00X\x01\x00\x00\x007q\x01a.";

fn storage() -> Vec<u8> {
    [0.0f32, 3.0, 1.0, 4.0, 2.0, 5.0].iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A legacy checkpoint and the offsets where its parts meet.
fn legacy_file() -> (Vec<u8>, Vec<usize>) {
    let mut bytes = Vec::new();
    let mut boundaries = Vec::new();
    for part in [MAGIC, PROTOCOL, SYS_INFO, OBJECT, KEYS, &6i64.to_le_bytes(), &storage()] {
        bytes.extend_from_slice(part);
        boundaries.push(bytes.len());
    }
    (bytes, boundaries)
}

/// A torch zip archive of stored entries (as torch.save writes them), and its structural offsets.
fn zip_file(entries: &[(&str, Vec<u8>)]) -> (Vec<u8>, Vec<usize>) {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut boundaries = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        boundaries.push(out.len());
        out.extend(b"PK\x03\x04");
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out.extend((name.len() as u16).to_le_bytes());
        out.extend(0u16.to_le_bytes());
        out.extend(name.as_bytes());
        boundaries.push(out.len());
        out.extend(data);
        central.extend(b"PK\x01\x02");
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((data.len() as u32).to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        central.extend([0; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let dir = out.len() as u32;
    boundaries.push(out.len());
    out.extend(&central);
    boundaries.push(out.len());
    out.extend(b"PK\x05\x06\0\0\0\0");
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(dir.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    (out, boundaries)
}

fn zip_entries() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("archive/data.pkl", OBJECT.to_vec()),
        ("archive/byteorder", b"little".to_vec()),
        ("archive/data/7", storage()),
        ("archive/version", b"3\n".to_vec()),
    ]
}

/// Offsets of the opcodes a pickle's structure hangs on (approximately: bytes that are opcodes).
fn pickle_boundaries(pickle: &[u8]) -> Vec<usize> {
    pickle.iter().enumerate().filter(|(_, b)| b"(tRQsqcX}KN.\x86".contains(b)).map(|(i, _)| i).collect()
}

#[test]
fn torch_checkpoints_survive_mutation() {
    let scratch = Scratch::new("torch");
    let read = |bytes: &[u8]| read_state_dict(&scratch.write("x.pt", bytes));

    let (legacy, boundaries) = legacy_file();
    assert_eq!(read(&legacy).unwrap().len(), 1, "the legacy base file must be valid");
    check("torch legacy file", &byte_mutants(&legacy, &boundaries, 1, per_reader()), read);

    let (zip, boundaries) = zip_file(&zip_entries());
    assert_eq!(read(&zip).unwrap().len(), 1, "the zip base file must be valid");
    check("torch zip file", &byte_mutants(&zip, &boundaries, 2, per_reader()), read);

    // The pickle and the storages damaged inside an intact archive, and entries dropped or doubled.
    let mut inner = Vec::new();
    for m in byte_mutants(OBJECT, &pickle_boundaries(OBJECT), 3, per_reader() * 2 / 3) {
        let mut entries = zip_entries();
        entries[0].1 = m.bytes;
        inner.push(Mutant { bytes: zip_file(&entries).0, what: format!("data.pkl: {}", m.what) });
    }
    let mut rng = Rng::new(4);
    while inner.len() < per_reader() {
        let mut entries = zip_entries();
        let i = rng.below(entries.len());
        let what = match rng.below(3) {
            0 => {
                entries.remove(i);
                format!("entry {i} dropped")
            }
            1 => {
                entries.insert(i, entries[i].clone());
                format!("entry {i} doubled")
            }
            _ => {
                let cut = rng.below(entries[i].1.len() + 1);
                entries[i].1.truncate(cut);
                format!("entry {i} cut at {cut}")
            }
        };
        inner.push(Mutant { bytes: zip_file(&entries).0, what });
    }
    check("torch zip entries and pickle", &inner, read);
}

/// The header and tensor-data offsets of a safetensors file, its header and where its data starts.
fn safetensors_layout(bytes: &[u8]) -> (Vec<usize>, Value, usize) {
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let mut boundaries = vec![8, 8 + header_len];
    for t in header.as_object().unwrap().values() {
        if let Some(offsets) = t["data_offsets"].as_array() {
            boundaries.extend(offsets.iter().map(|o| 8 + header_len + o.as_u64().unwrap() as usize));
        }
    }
    (boundaries, header, 8 + header_len)
}

/// A safetensors file of every dtype the readers convert, with metadata.
fn safetensors_file() -> Vec<u8> {
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let bf16: Vec<u8> =
        [1.0f32, -2.0, 0.25, 3.0].iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
    let f16: Vec<u8> = [0x3c00u16, 0xc000].iter().flat_map(|h| h.to_le_bytes()).collect();
    let i64s: Vec<u8> = [1i64, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    let f64s: Vec<u8> = 2.5f64.to_le_bytes().to_vec();
    let views = vec![
        ("a", TensorView::new(Dtype::F32, vec![2, 3], &f32s).unwrap()),
        ("b", TensorView::new(Dtype::BF16, vec![4], &bf16).unwrap()),
        ("c", TensorView::new(Dtype::F16, vec![2], &f16).unwrap()),
        ("d", TensorView::new(Dtype::I64, vec![3], &i64s).unwrap()),
        ("e", TensorView::new(Dtype::F64, vec![1], &f64s).unwrap()),
    ];
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata)).unwrap()
}

/// Everything a caller may ask of a safetensors file: names, metadata, each tensor as f32 and as
/// i64, and a parameter store loading the float ones.
fn read_safetensors(path: &Path) -> anyhow::Result<usize> {
    let file = SafetensorsFile::open(path)?;
    file.metadata()?;
    let mut values = 0;
    for name in file.names() {
        file.dtype_and_shape(&name)?;
        values += file.f32(&name).map_or(0, |t| t.data.len());
        values += file.i64(&name).map_or(0, |t| t.data.len());
    }
    let mut store = ParamStore::new(Cpu::new()?);
    for (name, shape) in [("a", &[2usize, 3][..]), ("b", &[4]), ("c", &[2]), ("e", &[1])] {
        store.add(name, shape, vec![0.0; shape.iter().product()], ParamFlags::MATRIX)?;
    }
    store.load_partial_safetensors(path)?;
    Ok(values)
}

#[test]
fn safetensors_files_survive_mutation() {
    let scratch = Scratch::new("safetensors");
    let read = |bytes: &[u8]| read_safetensors(&scratch.write("x.safetensors", bytes));
    let base = safetensors_file();
    assert_eq!(read(&base).unwrap(), 6 + 4 + 2 + 3 + 1, "the base file must be valid");
    let (boundaries, header, data_start) = safetensors_layout(&base);
    let data = &base[data_start..];
    check("safetensors bytes", &byte_mutants(&base, &boundaries, 5, per_reader()), read);

    // Header damage in a well-framed file: wrong dtypes, huge shapes and offsets, dropped entries.
    let reframe = |header: &[u8]| -> Vec<u8> { [&(header.len() as u64).to_le_bytes()[..], header, data].concat() };
    let mut mutants: Vec<Mutant> = json_mutants(&header, 6, per_reader() / 2)
        .into_iter()
        .map(|m| Mutant { bytes: reframe(&m.bytes), what: format!("header: {}", m.what) })
        .collect();
    let mut rng = Rng::new(7);
    let names = ["a", "b", "c", "d", "e"];
    while mutants.len() < per_reader() {
        let mut h = header.clone();
        let name = *rng.pick(&names);
        let what = match rng.below(3) {
            0 => {
                let dtype = *rng.pick(&["F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "X"]);
                h[name]["dtype"] = dtype.into();
                format!("{name}: dtype {dtype}")
            }
            1 => {
                let shape: Vec<u64> =
                    (0..rng.below(4)).map(|_| *rng.pick(&[0, 1, 7, 1 << 31, 1 << 62, u64::MAX])).collect();
                h[name]["shape"] = shape.clone().into();
                format!("{name}: shape {shape:?}")
            }
            _ => {
                let ends: Vec<u64> = (0..2).map(|_| *rng.pick(&[0, 4, 24, 56, 1 << 40, u64::MAX])).collect();
                h[name]["data_offsets"] = ends.clone().into();
                format!("{name}: data_offsets {ends:?}")
            }
        };
        mutants.push(Mutant { bytes: reframe(&serde_json::to_vec(&h).unwrap()), what });
    }
    check("safetensors header", &mutants, read);
}

fn tiny_model() -> ParamStore {
    let mut s = ParamStore::new(Cpu::new().unwrap());
    s.add("w", &[4, 3], (0..12).map(|i| i as f32 * 0.1).collect(), ParamFlags::MATRIX).unwrap();
    s.add("n", &[3], vec![1.0; 3], ParamFlags::NO_DECAY).unwrap();
    s
}

/// A run's checkpoint (issue 26's "checkpoint with one tensor cut short"): each of its three files
/// damaged in turn, the others intact, must load or be refused cleanly.
#[test]
fn training_checkpoints_survive_mutation() {
    let scratch = Scratch::new("checkpoint");
    let mut params = tiny_model();
    let mut opt = AdamW::new(AdamWConfig::default(), &params);
    params.grad_mut(ParamId(0)).fill(0.5);
    opt.step(&mut params, 1e-3);
    let state = TrainState {
        step: 1,
        schedule: serde_json::json!({"lr": 1e-3, "warmup": 10}),
        counters: serde_json::json!({"tokens": 64}),
        data_cursor: serde_json::json!([3, 8]),
    };
    let dir = save_checkpoint(&scratch.0.join("run"), &state, &params, &opt).unwrap();
    // One store and optimizer for every load: a load checks everything before changing anything.
    let (mut into, mut into_opt) = (tiny_model(), AdamW::new(AdamWConfig::default(), &params));
    let mut load = || load_checkpoint(&dir, &mut into, &mut into_opt);
    assert_eq!(load().unwrap(), state, "the base checkpoint must load");

    let path = dir.join("state.json");
    let base: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let original = std::fs::read(&path).unwrap();
    check("checkpoint state.json", &json_mutants(&base, 8, per_reader()), &mut |bytes: &[u8]| {
        std::fs::write(&path, bytes)?;
        load()
    });
    std::fs::write(&path, original).unwrap();

    for (file, seed) in [("model.safetensors", 9), ("optimizer.safetensors", 10)] {
        let path = dir.join(file);
        let base = std::fs::read(&path).unwrap();
        let (boundaries, header, data_start) = safetensors_layout(&base);
        let mut mutants = byte_mutants(&base, &boundaries, seed, per_reader() / 2);
        mutants.extend(json_mutants(&header, seed + 100, per_reader() / 2).into_iter().map(|m| Mutant {
            bytes: [&(m.bytes.len() as u64).to_le_bytes()[..], &m.bytes, &base[data_start..]].concat(),
            what: format!("header: {}", m.what),
        }));
        check(&format!("checkpoint {file}"), &mutants, &mut |bytes: &[u8]| {
            std::fs::write(&path, bytes)?;
            load()
        });
        std::fs::write(&path, base).unwrap();
    }
}
