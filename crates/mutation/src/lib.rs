//! Seeded mutation testing of readers of outside bytes (issue 26): every damaged input must end in
//! `Ok` or a clean `Err`, never a panic or an oversized allocation.
//!
//! Test-only by purpose: a crate of its own that depends on nothing of vlmix, so every crate's
//! tests can use it as a dev-dependency without widening the crate graph. Deterministic: the same
//! seed gives the same inputs, so a failure names an input that can be replayed.

use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

/// splitmix64: tiny, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// `base` inputs per reader, times `VLMIX_MUTATION_SCALE` when set (scripts/fuzz.sh's longer runs).
pub fn per_reader(base: usize) -> usize {
    base * env_number("VLMIX_MUTATION_SCALE").unwrap_or(1).max(1) as usize
}

/// `seed` moved by `VLMIX_MUTATION_SEED` when set, so each round of a longer run tries new inputs
/// (the default 0 keeps the test suite's inputs fixed).
fn offset_seed(seed: u64) -> u64 {
    match env_number("VLMIX_MUTATION_SEED") {
        Some(round) if round > 0 => seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        _ => seed,
    }
}

/// A number from the environment; a value that is not one is a mistake worth stopping for.
fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")))
}

/// One damaged input and how it was made (for the failure report).
pub struct Mutant {
    pub bytes: Vec<u8>,
    pub what: String,
}

/// Integers that break size and offset fields.
const INTERESTING: [u64; 12] =
    [0, 1, 0x7f, 0xff, 0xffff, 0x7fff_ffff, 0xffff_ffff, 1 << 32, 1 << 40, i64::MAX as u64, u64::MAX, u64::MAX - 7];

/// Little-endian f32/f64/f16/bf16 bit patterns of NaN and the infinities.
const NON_FINITE: [&[u8]; 8] = [
    &[0x00, 0x00, 0xc0, 0x7f],
    &[0x00, 0x00, 0x80, 0x7f],
    &[0x00, 0x00, 0x80, 0xff],
    &[0, 0, 0, 0, 0, 0, 0xf8, 0x7f],
    &[0, 0, 0, 0, 0, 0, 0xf0, 0x7f],
    &[0x00, 0x7e],
    &[0x00, 0x7c],
    &[0xc0, 0x7f],
];

/// `count` byte-level mutants of `base`: first a truncation at (and one byte either side of) every
/// structural offset in `boundaries`, then seeded bit flips, interesting integers written at
/// boundaries or anywhere, non-finite floats, and chunks between boundaries dropped or doubled.
pub fn byte_mutants(base: &[u8], boundaries: &[usize], seed: u64, count: usize) -> Vec<Mutant> {
    let mut cuts: Vec<usize> =
        boundaries.iter().flat_map(|&b| [b.saturating_sub(1), b, b + 1]).filter(|&c| c < base.len()).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut marks: Vec<usize> = boundaries.iter().copied().filter(|&b| b <= base.len()).collect();
    marks.extend([0, base.len()]);
    marks.sort_unstable();
    marks.dedup();
    let mut out: Vec<Mutant> = cuts
        .into_iter()
        .take(count)
        .map(|c| Mutant { bytes: base[..c].to_vec(), what: format!("cut at {c}") })
        .collect();
    let mut rng = Rng::new(offset_seed(seed));
    while out.len() < count && !base.is_empty() {
        let mut bytes = base.to_vec();
        let what = match rng.below(7) {
            0 | 1 => {
                let flips = 1 + rng.below(8);
                for _ in 0..flips {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
                format!("{flips} bit flips")
            }
            2 => {
                let at = if rng.below(2) == 0 { *rng.pick(&marks) } else { rng.below(bytes.len()) };
                let width = *rng.pick(&[1usize, 2, 4, 8]);
                let value = rng.pick(&INTERESTING).to_le_bytes();
                let end = (at + width).min(bytes.len());
                let n = end.saturating_sub(at);
                bytes[at.min(end)..end].copy_from_slice(&value[..n]);
                format!("{width}-byte integer {:#x} at {at}", u64::from_le_bytes(value))
            }
            3 => {
                let pattern = *rng.pick(&NON_FINITE);
                let at = rng.below(bytes.len());
                let end = (at + pattern.len()).min(bytes.len());
                bytes[at..end].copy_from_slice(&pattern[..end - at]);
                format!("non-finite float at {at}")
            }
            4 | 5 => {
                let i = rng.below(marks.len().max(2) - 1);
                let (a, b) = (marks[i], marks[(i + 1).min(marks.len() - 1)]);
                if rng.below(2) == 0 {
                    bytes.drain(a..b);
                    format!("dropped {a}..{b}")
                } else {
                    let chunk = bytes[a..b].to_vec();
                    bytes.splice(b..b, chunk);
                    format!("doubled {a}..{b}")
                }
            }
            _ => {
                let at = rng.below(bytes.len());
                bytes.truncate(at);
                format!("cut at {at}")
            }
        };
        out.push(Mutant { bytes, what });
    }
    out
}

/// `count` structural mutants of a JSON document: a value replaced by another type, an extreme
/// number or a deep nest, a key dropped or an object entry doubled in the text; then byte mutants
/// of the text for the rest (a quarter).
pub fn json_mutants(base: &Value, seed: u64, count: usize) -> Vec<Mutant> {
    let text = serde_json::to_vec(base).expect("a Value serialises");
    let structural = count - count / 4;
    let mut rng = Rng::new(offset_seed(seed));
    let mut out = Vec::with_capacity(count);
    for _ in 0..structural {
        let mut doc = base.clone();
        let paths = paths(&doc);
        let path = rng.pick(&paths).clone();
        let node = at_path(&mut doc, &path);
        let what = match rng.below(4) {
            0 => {
                let extreme = [
                    Value::from(u64::MAX),
                    Value::from(i64::MIN),
                    Value::from(0),
                    Value::from(-1),
                    Value::from(1u64 << 40),
                    Value::from(u32::MAX),
                    Value::from(1e308),
                    Value::from(-0.5),
                    Value::from(1.5),
                ];
                *node = rng.pick(&extreme).clone();
                format!("{path:?} = {node}")
            }
            1 => {
                let other = [
                    Value::Null,
                    Value::Bool(true),
                    Value::from("x"),
                    Value::Array(vec![]),
                    Value::Object(Default::default()),
                ];
                *node = rng.pick(&other).clone();
                format!("{path:?} = {node}")
            }
            2 => {
                let mut nest = Value::from(1);
                for _ in 0..(1 + rng.below(200)) {
                    nest = Value::Array(vec![nest]);
                }
                *node = nest;
                format!("{path:?} nested")
            }
            _ => match node {
                Value::Object(map) if !map.is_empty() => {
                    let key = map.keys().nth(rng.below(map.len())).cloned().unwrap_or_default();
                    map.remove(&key);
                    format!("{path:?}: dropped {key:?}")
                }
                Value::Array(items) if !items.is_empty() => {
                    let i = rng.below(items.len());
                    let item = items[i].clone();
                    if rng.below(2) == 0 {
                        items.remove(i);
                    } else {
                        items.insert(i, item);
                    }
                    format!("{path:?}: item {i} dropped or doubled")
                }
                _ => {
                    *node = Value::Null;
                    format!("{path:?} = null")
                }
            },
        };
        let mut bytes = serde_json::to_vec(&doc).expect("a Value serialises");
        // Non-finite numbers and doubled keys cannot be held by a `Value`: edit the text.
        if rng.below(8) == 0 {
            bytes =
                String::from_utf8_lossy(&bytes).replacen("1.5", "NaN", 1).replacen("1e308", "1e999", 1).into_bytes();
        }
        if rng.below(8) == 0 && bytes.first() == Some(&b'{') && bytes.len() > 2 {
            let inner = bytes[1..bytes.len() - 1].to_vec();
            bytes.truncate(bytes.len() - 1);
            bytes.push(b',');
            bytes.extend(inner);
            bytes.push(b'}');
        }
        out.push(Mutant { bytes, what });
    }
    let boundaries: Vec<usize> =
        text.iter().enumerate().filter(|(_, b)| b"{}[],:\"".contains(b)).map(|(i, _)| i).collect();
    out.extend(byte_mutants(&text, &boundaries, seed ^ 0x5eed, count - structural));
    out
}

/// Paths (object keys and array indices as strings) to every node of `doc`, root included.
fn paths(doc: &Value) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    let mut i = 0;
    while i < out.len() {
        let path = out[i].clone();
        let mut node = doc;
        for key in &path {
            node = match node {
                Value::Object(m) => &m[key],
                Value::Array(a) => &a[key.parse::<usize>().expect("an index")],
                _ => unreachable!("paths only lead through containers"),
            };
        }
        match node {
            Value::Object(m) => out.extend(m.keys().map(|k| [path.clone(), vec![k.clone()]].concat())),
            Value::Array(a) => out.extend((0..a.len()).map(|j| [path.clone(), vec![j.to_string()]].concat())),
            _ => {}
        }
        i += 1;
    }
    out
}

fn at_path<'a>(doc: &'a mut Value, path: &[String]) -> &'a mut Value {
    path.iter().fold(doc, |node, key| match node {
        Value::Object(m) => m.get_mut(key).expect("a path from `paths`"),
        Value::Array(a) => &mut a[key.parse::<usize>().expect("an index")],
        _ => unreachable!("paths only lead through containers"),
    })
}

/// Where mutation tests write their inputs: `/dev/shm` when there is one, as rewriting a file in
/// place thousands of times on ext4 forces a disk flush each time (`auto_da_alloc`).
pub fn scratch_root() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A fresh directory under [`scratch_root`] for one reader's inputs, removed when dropped.
pub fn scratch_dir(tag: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("vlmix-mutation-{tag}")).tempdir_in(scratch_root()).unwrap()
}

/// Index of the input being read (for `CappedAlloc`'s message).
static CURRENT_INPUT: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Feeds every mutant to `read`, which must return `Ok` or `Err` without panicking. Prints how many
/// inputs `reader` was given; panics (the test fails) listing the first inputs that panicked.
pub fn check<T>(reader: &str, mutants: &[Mutant], mut read: impl FnMut(&[u8]) -> anyhow::Result<T>) -> Tally {
    let mut tally = Tally::default();
    let mut panics = Vec::new();
    for (i, m) in mutants.iter().enumerate() {
        CURRENT_INPUT.store(i, Ordering::Relaxed);
        match catch_unwind(AssertUnwindSafe(|| read(&m.bytes))) {
            Ok(Ok(_)) => tally.ok += 1,
            Ok(Err(_)) => tally.err += 1,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                panics.push(format!("input {i} ({}): {message}", m.what));
            }
        }
    }
    CURRENT_INPUT.store(usize::MAX, Ordering::Relaxed);
    println!(
        "mutation {reader}: {} inputs tried: {} ok, {} clean errors, {} panics",
        mutants.len(),
        tally.ok,
        tally.err,
        panics.len()
    );
    assert!(
        panics.is_empty(),
        "{reader}: {} inputs panicked:\n{}",
        panics.len(),
        panics[..panics.len().min(10)].join("\n")
    );
    tally
}

/// How the inputs of one `check` ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    pub ok: usize,
    pub err: usize,
}

/// A global allocator for mutation-test binaries: a single allocation over `cap` bytes is refused
/// (null), so `try_reserve` reports it and anything else aborts the test (a header's declared size
/// must be checked against the input first); the input being read is named on stderr.
pub struct CappedAlloc {
    pub cap: usize,
}

// SAFETY: forwards to the system allocator unchanged, or returns null (allocation failure).
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if self.refuses(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if self.refuses(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

impl CappedAlloc {
    fn refuses(&self, size: usize) -> bool {
        if size <= self.cap {
            return false;
        }
        // `writeln!` of integers to unbuffered stderr does not allocate.
        let input = CURRENT_INPUT.load(Ordering::Relaxed);
        let _ =
            writeln!(std::io::stderr(), "mutation: input {input} asked for {size} bytes, over the cap of {}", self.cap);
        true
    }
}
