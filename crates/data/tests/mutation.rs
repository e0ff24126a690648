//! Issue 26: the readers of outside data files (WebDataset shards, LLaVA JSON, vision-language and
//! text eval JSONL, JSONL / .gz / .zst text, the VQAv2, GQA, TextVQA and POPE benchmark layouts,
//! tokenizer.json, token shards, a bring-your-own text corpus and the shard stream with its cursor)
//! given thousands of seeded damaged inputs end in `Ok` or a clean `Err`: no panic, no allocation
//! over the cap. Each reader starts from a small valid file built here.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use vlmix_data::byod::eval_sets::{EvalFormat, EvalSource};
use vlmix_data::byod::stream::{ShardStream, StreamConfig, StreamCursor};
use vlmix_data::byod::text::{open_text, TextSpec};
use vlmix_data::byod::OnBadRecord;
use vlmix_data::image_io::encode_png;
use vlmix_data::jsonl::read_lines;
use vlmix_data::llava::LlavaSet;
use vlmix_data::packing::TokenDocuments;
use vlmix_data::text::shard::{write_token_shard, TokenShard, TokenShards};
use vlmix_data::text_eval::read_choice_items;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::vl_eval::EvalSet;
use vlmix_data::webdataset::{read_shard, ShardBuilder};
use vlmix_mutation::{byte_mutants, check, json_mutants, scratch_dir, CappedAlloc, Mutant};

/// The inputs are a few KiB: a reader asking for more trusted a declared size.
#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc { cap: 64 << 20 };

/// Inputs per reader: 1,000 in the test suite, more under scripts/fuzz.sh.
fn per_reader() -> usize {
    vlmix_mutation::per_reader(1000)
}

fn png(seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([seed, x as u8 * 40, y as u8 * 50]));
    encode_png(&image).unwrap()
}

/// Offsets of every byte in `text` that is one of `marks`.
fn offsets_of(text: &[u8], marks: &[u8]) -> Vec<usize> {
    text.iter().enumerate().filter(|(_, b)| marks.contains(b)).map(|(i, _)| i).collect()
}

/// JSONL mutants: each structural mutant damages one line (chosen by the seed) of `lines`, the rest
/// are byte mutants of the whole file cut at lines and JSON punctuation.
fn jsonl_mutants(lines: &[Value], seed: u64, count: usize) -> Vec<Mutant> {
    let text: Vec<String> = lines.iter().map(|l| serde_json::to_string(l).unwrap()).collect();
    let whole = format!("{}\n", text.join("\n")).into_bytes();
    let per_line = (count / 2).div_ceil(lines.len());
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        for m in json_mutants(line, seed + i as u64, per_line) {
            let mut file = Vec::new();
            for (j, other) in text.iter().enumerate() {
                file.extend_from_slice(if i == j { &m.bytes } else { other.as_bytes() });
                file.push(b'\n');
            }
            out.push(Mutant { bytes: file, what: format!("line {}: {}", i + 1, m.what) });
        }
    }
    out.truncate(count / 2);
    let rest = count - out.len();
    out.extend(byte_mutants(&whole, &offsets_of(&whole, b"\n{}[],:\""), seed ^ 0xb17e, rest));
    out
}

#[test]
fn webdataset_shard_survives_mutation() {
    let dir = scratch_dir("wds");
    let mut builder = ShardBuilder::new();
    for (i, key) in ["a0", "a1", "a2"].iter().enumerate() {
        let meta = serde_json::to_vec(&json!({"caption": format!("picture {i}"), "width": 6})).unwrap();
        let image = png(i as u8 * 60);
        let caption = format!("a picture number {i}");
        builder.add(key, &[("png", &image), ("txt", caption.as_bytes()), ("json", &meta)]).unwrap();
    }
    let base = builder.finish().unwrap();
    let shard = dir.path().join("shard-000000.tar");
    let read = |path: &Path| {
        let mut samples = 0;
        let counts = read_shard(path, |item| {
            if let Ok(sample) = item {
                samples += usize::from(!sample.caption.is_empty() && sample.image.width() > 0);
            }
            Ok(())
        })?;
        anyhow::Ok((counts, samples))
    };
    std::fs::write(&shard, &base).unwrap();
    let (counts, _) = read(&shard).unwrap();
    assert_eq!((counts.samples, counts.problems), (3, 0), "the base shard must read cleanly");

    // Tar headers and data blocks start every 512 bytes; the size field is at 124..136 of a header.
    let mut boundaries: Vec<usize> = (0..base.len()).step_by(512).collect();
    boundaries.extend((0..base.len()).step_by(512).map(|b| b + 124));
    let mut mutants = byte_mutants(&base, &boundaries, 31, 2 * per_reader());
    // Bit flips in a header break its checksum; these keep it valid and lie about the size.
    for header in tar_headers(&base) {
        for size in SIZE_FIELDS {
            mutants.push(Mutant {
                bytes: with_size_field(&base, header, size),
                what: format!("size {size:?} at {header}"),
            });
        }
    }
    let mut problems = 0;
    check("WebDataset shard", &mutants, |bytes| {
        std::fs::write(&shard, bytes)?;
        let (counts, _) = read(&shard)?;
        problems += counts.problems;
        anyhow::Ok(())
    });
    assert!(problems > 0, "damaged shards are read to the end with their problems reported, not as errors");
}

/// Tar size fields: octal at the largest a ustar header holds, and GNU base-256 huge values.
const SIZE_FIELDS: [[u8; 12]; 4] = [
    *b"77777777777\0",
    *b"00000001000\0",
    [0x80, 0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0],
    [0x80, 0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
];

/// Offsets of the member headers of an intact tar archive.
fn tar_headers(tar: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 512 <= tar.len() && tar[at] != 0 {
        out.push(at);
        let size = std::str::from_utf8(&tar[at + 124..at + 135]).unwrap().trim_matches(['\0', ' ']);
        at += 512 + usize::from_str_radix(size, 8).unwrap().div_ceil(512) * 512;
    }
    out
}

/// `tar` with the header at `header` given size field `size` and a recomputed checksum.
fn with_size_field(tar: &[u8], header: usize, size: [u8; 12]) -> Vec<u8> {
    let mut out = tar.to_vec();
    out[header + 124..header + 136].copy_from_slice(&size);
    out[header + 148..header + 156].fill(b' ');
    let sum: u32 = out[header..header + 512].iter().map(|&b| u32::from(b)).sum();
    out[header + 148..header + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out
}

/// Regression (found by the mutation test): a member header declaring a size of gigabytes made the
/// reader reserve that much before reading the member.
#[test]
fn huge_tar_member_size_is_a_problem_not_an_allocation() {
    let dir = scratch_dir("wds-size");
    let mut builder = ShardBuilder::new();
    builder.add("k", &[("png", &png(9)), ("txt", b"a caption")]).unwrap();
    let base = builder.finish().unwrap();
    let shard = dir.path().join("big.tar");
    for size in SIZE_FIELDS.into_iter().filter(|s| s != b"00000001000\0") {
        std::fs::write(&shard, with_size_field(&base, 0, size)).unwrap();
        let mut problems = Vec::new();
        read_shard(&shard, |item| {
            if let Err(problem) = item {
                problems.push(problem);
            }
            Ok(())
        })
        .unwrap();
        let fatal = problems.iter().find(|p| p.fatal).unwrap_or_else(|| panic!("size {size:?}: {problems:?}"));
        assert!(fatal.to_string().contains("big.tar"), "{fatal}");
    }
}

fn llava_base(dir: &Path) -> Value {
    std::fs::write(dir.join("cat.png"), png(1)).unwrap();
    json!([
        {"id": "r1", "image": "cat.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown?"}, {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "Which colour?"}, {"from": "gpt", "value": "Grey."}]},
        {"id": 2, "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
    ])
}

#[test]
fn llava_json_survives_mutation() {
    let dir = scratch_dir("llava");
    let base = llava_base(dir.path());
    let path = dir.path().join("data.json");
    let read = |path: &Path| {
        let set = LlavaSet::read(path, None)?;
        for (_, record) in &set.records {
            let _ = set.image_path(record);
            let _ = record.exchanges().count();
        }
        set.into_records()
    };
    std::fs::write(&path, serde_json::to_vec(&base).unwrap()).unwrap();
    assert_eq!(read(&path).unwrap().len(), 2, "the base file must read cleanly");
    check("LLaVA JSON array", &json_mutants(&base, 41, per_reader()), |bytes| {
        std::fs::write(&path, bytes)?;
        read(&path)
    });
    let lines = base.as_array().unwrap().clone();
    let path = dir.path().join("data.jsonl");
    check("LLaVA JSON Lines", &jsonl_mutants(&lines, 42, per_reader()), |bytes| {
        std::fs::write(&path, bytes)?;
        read(&path)
    });
}

#[test]
fn vl_eval_jsonl_survives_mutation() {
    let dir = scratch_dir("vl-eval");
    std::fs::write(dir.path().join("a.png"), png(2)).unwrap();
    let lines = vec![
        json!({"id": "1", "task": "t", "image": "a.png", "question": "What?", "answers": ["cat"], "type": "open"}),
        json!({"id": 2, "task": "t", "image": "a.png", "question": "A cat?", "answers": ["yes"], "type": "yes_no",
               "chance": 0.5}),
        json!({"id": "3", "task": "t", "image": "a.png", "question": "Which?", "answers": ["b"], "type": "choice",
               "choices": ["a", "b", "c"]}),
    ];
    let path = dir.path().join("eval.jsonl");
    let read = |path: &Path| {
        let set = EvalSet::read(path)?;
        anyhow::ensure!(set.problems.is_empty(), "{}", set.problems[0]);
        Ok(set.items.len())
    };
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    assert_eq!(read(&path).unwrap(), 3, "the base file must read cleanly");
    check("vision-language eval JSONL", &jsonl_mutants(&lines, 51, per_reader()), |bytes| {
        std::fs::write(&path, bytes)?;
        read(&path)
    });
}

fn choice_lines() -> Vec<Value> {
    vec![
        json!({"id": "t/1", "task": "t", "context": "Q: 1+1?", "choices": [" 1", " 2"], "gold": 1, "chance": 0.5}),
        json!({"id": 2, "task": "t", "context": "", "choices": [" x", " y", " z"], "gold": 0,
               "contexts": ["a", "b", "c"], "metric": "acc_norm"}),
    ]
}

#[test]
fn text_eval_jsonl_survives_mutation() {
    let dir = scratch_dir("text-eval");
    let lines = choice_lines();
    let path = dir.path().join("mc.jsonl");
    let read = |path: &Path| {
        let items = read_choice_items(path)?;
        for item in &items {
            let _ = (0..item.choices.len()).map(|i| item.context_for(i).len()).sum::<usize>();
        }
        anyhow::Ok(items.len())
    };
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    assert_eq!(read(&path).unwrap(), 2, "the base file must read cleanly");
    check("text eval JSONL", &jsonl_mutants(&lines, 61, per_reader()), |bytes| {
        std::fs::write(&path, bytes)?;
        read(&path)
    });
}

/// Compressed JSONL: byte mutants of the compressed stream (the frame headers and the end), read
/// through `jsonl::read_lines` as the text sources are.
#[test]
fn compressed_jsonl_survives_mutation() {
    let dir = scratch_dir("jsonl");
    let lines: Vec<String> =
        (0..40).map(|i| json!({"text": format!("document {i} with some words"), "id": i}).to_string()).collect();
    let plain = format!("{}\n", lines.join("\n")).into_bytes();
    let parse = |line: &str| serde_json::from_str::<Value>(line).map_err(|e| e.to_string());

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let cases: [(&str, Vec<u8>, Vec<usize>); 3] = [
        ("text.jsonl", plain.clone(), offsets_of(&plain, b"\n{}\"")),
        ("text.jsonl.gz", gz.clone(), vec![4, 10, gz.len().saturating_sub(8)]),
        ("text.jsonl.zst", zst.clone(), vec![4, 5, 6, 8, zst.len().saturating_sub(4)]),
    ];
    for (i, (name, base, boundaries)) in cases.into_iter().enumerate() {
        let path = dir.path().join(name);
        std::fs::write(&path, &base).unwrap();
        assert_eq!(read_lines(&path, "text", parse).unwrap().len(), 40, "{name} must read cleanly");
        check(&format!("JSONL {name}"), &byte_mutants(&base, &boundaries, 71 + i as u64, per_reader()), |bytes| {
            std::fs::write(&path, bytes)?;
            read_lines(&path, "text", parse)
        });
    }
}

fn eval_source(dir: &Path, format: EvalFormat, questions: &str, annotations: Option<&str>) -> EvalSource {
    EvalSource {
        name: "bench".into(),
        format,
        questions: dir.join(questions),
        annotations: annotations.map(|a| dir.join(a)),
        images: dir.join("images"),
    }
}

#[test]
fn vqav2_files_survive_mutation() {
    let dir = scratch_dir("vqav2");
    std::fs::create_dir(dir.path().join("images")).unwrap();
    for id in [1, 2] {
        std::fs::write(dir.path().join(format!("images/COCO_val2014_{id:012}.jpg")), png(3)).unwrap();
    }
    let questions = json!({"data_subtype": "val2014", "questions": [
        {"question_id": 10, "image_id": 1, "question": "What colour?"},
        {"question_id": 11, "image_id": 2, "question": "How many?"}]});
    let annotations = json!({"annotations": [
        {"question_id": 10, "answers": [{"answer": "red"}, {"answer": "red"}]},
        {"question_id": 11, "answers": [{"answer": "2"}]}]});
    let source = eval_source(dir.path(), EvalFormat::Vqav2, "q.json", Some("a.json"));
    let write = |name: &str, value: &Value| std::fs::write(dir.path().join(name), value.to_string()).unwrap();
    write("q.json", &questions);
    write("a.json", &annotations);
    let read = || source.read().map(|r| (r.items.len(), r.problems.len()));
    assert_eq!(read().unwrap(), (2, 0), "the base files must read cleanly");
    for (name, base, seed) in [("q.json", &questions, 81), ("a.json", &annotations, 82)] {
        check(&format!("VQAv2 {name}"), &json_mutants(base, seed, per_reader()), |bytes| {
            std::fs::write(dir.path().join(name), bytes)?;
            read()
        });
        write(name, base);
    }
}

#[test]
fn pope_jsonl_survives_mutation() {
    let dir = scratch_dir("pope");
    std::fs::create_dir(dir.path().join("images")).unwrap();
    std::fs::write(dir.path().join("images/x.jpg"), png(4)).unwrap();
    let lines = vec![
        json!({"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "yes"}),
        json!({"question_id": 2, "image": "x.jpg", "text": "Is there a dog?", "answer": "No"}),
    ];
    let source = eval_source(dir.path(), EvalFormat::Pope, "pope.jsonl", None);
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    std::fs::write(&source.questions, text.join("\n")).unwrap();
    let read = || source.read().map(|r| (r.items.len(), r.problems.len()));
    assert_eq!(read().unwrap(), (2, 0), "the base file must read cleanly");
    check("POPE JSONL", &jsonl_mutants(&lines, 91, per_reader()), |bytes| {
        std::fs::write(&source.questions, bytes)?;
        read()
    });
}

#[test]
fn tokenizer_json_survives_mutation() {
    let dir = scratch_dir("tokenizer");
    let texts: Vec<String> =
        (0..50).map(|i| format!("the quick brown fox {i} jumps over the lazy dog number {}", i * 7)).collect();
    let tokenizer = TextTokenizer::train(texts.iter().map(String::as_str), 300).unwrap();
    let path: PathBuf = dir.path().join("tokenizer.json");
    tokenizer.save(&path).unwrap();
    let base: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let read = |path: &Path| {
        let t = TextTokenizer::load(path)?;
        let ids = t.encode("the quick fox")?;
        t.decode(&ids)
    };
    read(&path).expect("the base tokenizer must load");
    check("tokenizer.json", &json_mutants(&base, 101, per_reader()), |bytes| {
        std::fs::write(&path, bytes)?;
        read(&path)
    });
}

/// Regression (found by the mutation test): a tokenizer.json cut inside `"decoder"` made the
/// `tokenizers` crate panic (an `expect` in its decoder deserialiser) instead of returning an error.
#[test]
fn tokenizer_json_cut_in_decoder_is_an_error_naming_the_file() {
    let dir = scratch_dir("tokenizer-cut");
    let texts = ["a small text to train on", "another small text"];
    let path = dir.path().join("tokenizer.json");
    TextTokenizer::train(texts.into_iter(), 280).unwrap().save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let decoder = text.find("\"decoder\"").expect("a trained tokenizer has a decoder");
    for cut in [decoder + 11, decoder + 14, decoder + 20] {
        std::fs::write(&path, &text[..cut]).unwrap();
        let err = TextTokenizer::load(&path).err().expect("a cut file cannot load");
        assert!(format!("{err:#}").contains("tokenizer.json"), "{err:#}");
    }
}

#[test]
fn gqa_questions_survive_mutation() {
    let dir = scratch_dir("gqa");
    std::fs::create_dir(dir.path().join("images")).unwrap();
    for id in ["n1", "n2"] {
        std::fs::write(dir.path().join(format!("images/{id}.jpg")), png(5)).unwrap();
    }
    let questions = json!({
        "201307251": {"question": "Is it overcast?", "imageId": "n1", "answer": "no", "fullAnswer": "No.",
                      "types": {"semantic": "global"}, "isBalanced": true, "entailed": ["201307252"]},
        "201640614": {"question": "Who is wearing the dress?", "imageId": "n2", "answer": "woman"},
    });
    let source = eval_source(dir.path(), EvalFormat::Gqa, "testdev_balanced_questions.json", None);
    std::fs::write(&source.questions, questions.to_string()).unwrap();
    let read = || source.read().map(|r| (r.items.len(), r.problems.len()));
    assert_eq!(read().unwrap(), (2, 0), "the base file must read cleanly");
    check("GQA questions JSON", &json_mutants(&questions, 121, per_reader()), |bytes| {
        std::fs::write(&source.questions, bytes)?;
        read()
    });
}

#[test]
fn textvqa_file_survives_mutation() {
    let dir = scratch_dir("textvqa");
    std::fs::create_dir(dir.path().join("images")).unwrap();
    std::fs::write(dir.path().join("images/003a8ae2ef43b901.jpg"), png(6)).unwrap();
    let file = json!({"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": [
        {"question": "what brand?", "image_id": "003a8ae2ef43b901", "image_width": 1024, "image_height": 664,
         "answers": ["dakota", "dakota", "nous les gosses", "dakota digital"], "question_id": 34602, "set_name": "val"},
        {"question": "what number?", "image_id": "003a8ae2ef43b901", "answers": ["7"], "question_id": 34603}]});
    let source = eval_source(dir.path(), EvalFormat::Textvqa, "TextVQA_0.5.1_val.json", None);
    std::fs::write(&source.questions, file.to_string()).unwrap();
    let read = || source.read().map(|r| (r.items.len(), r.problems.len()));
    assert_eq!(read().unwrap(), (2, 0), "the base file must read cleanly");
    check("TextVQA JSON", &json_mutants(&file, 131, per_reader()), |bytes| {
        std::fs::write(&source.questions, bytes)?;
        read()
    });
}

/// Reads every document of a token shard as training does, and scans its ids as `data inspect` does.
fn read_token_shard(path: &Path, vocab: usize) -> anyhow::Result<usize> {
    let shard = TokenShard::open(path)?;
    let problems = shard.check_token_ids();
    let shards = TokenShards::open(&[path.to_path_buf()], vocab)?;
    let mut tokens = Vec::new();
    for d in 0..shards.n_docs() {
        shards.extend_with_doc(d, &mut tokens);
    }
    anyhow::ensure!(tokens.len() == shards.n_tokens());
    Ok(tokens.len() + problems.len())
}

#[test]
fn token_shard_survives_mutation() {
    let dir = scratch_dir("tokens");
    let path = dir.path().join("docs.tokens");
    for (seed, vocab) in [(141u64, 300usize), (142, 70_000)] {
        let docs: Vec<Vec<u32>> =
            (0..6u32).map(|d| (0..d * 3).map(|t| (t * 37 + d) % vocab as u32).collect()).collect();
        write_token_shard(&path, vocab, &docs).unwrap();
        let base = std::fs::read(&path).unwrap();
        assert_eq!(read_token_shard(&path, vocab).unwrap(), 45, "the base shard must read cleanly");
        // Header fields, then each document offset, then the ids.
        let mut boundaries = vec![8, 12, 16, 24, 32, 40, 64];
        boundaries.extend((0..=docs.len()).map(|d| 64 + 8 * d));
        check(
            &format!("token shard (vocab {vocab})"),
            &byte_mutants(&base, &boundaries, seed, per_reader()),
            |bytes| {
                std::fs::write(&path, bytes)?;
                read_token_shard(&path, vocab)
            },
        );
    }
}

fn byod_tokenizer(dir: &Path) -> (TextTokenizer, PathBuf) {
    let texts = ["the quick brown fox jumps over the lazy dog", "a cat sat on the mat by the door"];
    let path = dir.join("tokenizer.json");
    TextTokenizer::train(texts.iter().copied().cycle().take(40), 280).unwrap().save(&path).unwrap();
    (TextTokenizer::load(&path).unwrap(), path)
}

/// A user's DCLM-style JSONL corpus through `open_text` (tokenized into the cache, then read back
/// with a hold-out), under both bad-record policies: a damaged line is skipped and counted or
/// refused naming file:line, never a panic.
#[test]
fn byod_text_corpus_survives_mutation() {
    let dir = scratch_dir("byod-text");
    let (tokenizer, tokenizer_json) = byod_tokenizer(dir.path());
    let lines: Vec<Value> = (0..4)
        .map(
            |i| json!({"text": {"body": format!("the fox {i} sat on the mat")}, "url": "https://example.org", "id": i}),
        )
        .collect();
    let file = dir.path().join("corpus.jsonl");
    let cache = dir.path().join("cache");
    let mut round = 0usize;
    let mut read = |bytes: &[u8]| {
        std::fs::write(&file, bytes)?;
        round += 1;
        let on_bad_record = if round.is_multiple_of(2) { OnBadRecord::Skip } else { OnBadRecord::Fail };
        let spec = TextSpec {
            files: vec![file.clone()],
            validation_files: vec![],
            text_field: "text.body".into(),
            on_bad_record,
        };
        // Each input its own cache directory (the key hashes the file's time, which may not move).
        let data = open_text(&spec, &tokenizer, &tokenizer_json, &cache.join(round.to_string()))?;
        let mut tokens = Vec::new();
        for view in [&data.train, &data.validation] {
            for d in 0..view.n_docs() {
                view.extend_with_doc(d, &mut tokens);
            }
        }
        anyhow::Ok((tokens.len(), data.skipped.count))
    };
    let text: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    read(format!("{}\n", text.join("\n")).as_bytes()).expect("the base corpus must read cleanly");
    check("bring-your-own text JSONL", &jsonl_mutants(&lines, 151, per_reader()), read);
}

/// Set when any thread panicked: the stream reads shards on a thread of its own, whose panic would
/// otherwise only end the stream early.
static THREAD_PANICKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn watch_thread_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            THREAD_PANICKED.store(true, std::sync::atomic::Ordering::SeqCst);
            previous(info)
        }));
    });
}

/// The seeded shard stream over damaged shards (skip policy, problems counted) and resumed from
/// damaged cursors (as a saved cursor would be read back).
#[test]
fn shard_stream_and_cursor_survive_mutation() {
    watch_thread_panics();
    let dir = scratch_dir("stream");
    let shards: Vec<PathBuf> = (0..2)
        .map(|s| {
            let mut builder = ShardBuilder::new();
            for k in 0..3 {
                builder
                    .add(&format!("s{s}k{k}"), &[("png", &png(k)), ("txt", format!("caption {s} {k}").as_bytes())])
                    .unwrap();
            }
            let path = dir.path().join(format!("{s:05}.tar"));
            std::fs::write(&path, builder.finish().unwrap()).unwrap();
            path
        })
        .collect();
    let config = StreamConfig {
        seed: Some(7),
        shuffle_buffer: 3,
        caption: Default::default(),
        on_bad_record: OnBadRecord::Skip,
    };
    let drain = |cursor: StreamCursor| {
        THREAD_PANICKED.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut stream = ShardStream::new(shards.clone(), config.clone(), cursor)?;
        let mut samples = 0;
        for sample in stream.by_ref() {
            sample?;
            samples += 1;
        }
        assert!(!THREAD_PANICKED.load(std::sync::atomic::Ordering::SeqCst), "the stream's reading thread panicked");
        anyhow::Ok((samples, stream.skipped().count))
    };
    assert_eq!(drain(StreamCursor::default()).unwrap(), (6, 0), "the base shards must stream cleanly");

    let base = std::fs::read(&shards[1]).unwrap();
    let boundaries: Vec<usize> = (0..base.len()).step_by(512).flat_map(|b| [b, b + 124]).collect();
    let mut skipped = 0;
    check("shard stream (shard bytes)", &byte_mutants(&base, &boundaries, 161, per_reader()), |bytes| {
        std::fs::write(&shards[1], bytes)?;
        let (samples, left_out) = drain(StreamCursor::default())?;
        skipped += left_out;
        anyhow::Ok(samples)
    });
    assert!(skipped > 0, "damaged shards stream on with their bad records skipped and counted");
    std::fs::write(&shards[1], &base).unwrap();

    let mut stream = ShardStream::new(shards.clone(), config.clone(), StreamCursor::default()).unwrap();
    stream.next().unwrap().unwrap();
    let cursor = serde_json::to_value(stream.cursor()).unwrap();
    drop(stream);
    check("shard stream cursor JSON", &json_mutants(&cursor, 162, per_reader()), |bytes| {
        drain(serde_json::from_slice(bytes)?)
    });
}

/// Regression (found by the mutation test): a saved cursor counting `u64::MAX` samples handed out
/// overflowed the next count (a panic with overflow checks on).
#[test]
fn a_stream_cursor_at_the_counters_end_reads_on() {
    let dir = scratch_dir("stream-end");
    let mut builder = ShardBuilder::new();
    builder.add("k", &[("png", &png(1)), ("txt", b"a caption")]).unwrap();
    let path = dir.path().join("00000.tar");
    std::fs::write(&path, builder.finish().unwrap()).unwrap();
    let config = StreamConfig {
        seed: Some(1),
        shuffle_buffer: 2,
        caption: Default::default(),
        on_bad_record: OnBadRecord::Fail,
    };
    let cursor = StreamCursor { emitted: u64::MAX, ..Default::default() };
    let samples: Vec<_> = ShardStream::new(vec![path], config, cursor).unwrap().collect::<anyhow::Result<_>>().unwrap();
    assert_eq!(samples.len(), 1);
}
