//! `vlmix data make-example OUT`: user-style data for the README's bring-your-own-data example,
//! cut from the prepared registry data and written the way the field's tools write it:
//! ```text
//! OUT/shards/00000.tar .. 00004.tar   DataComp-style WebDataset: NNNNNNNNN.jpg + .txt + .json;
//!                                     00004.tar is cut mid-member (a truncated download)
//! OUT/llava/llava_instruct.json       LLaVA conversations, images under OUT/llava/images/;
//!                                     one record names an image that does not exist
//! OUT/text/shard_0000000N_processed.jsonl.zst   DCLM-style documents ("text", "url", "metadata")
//! OUT/eval/vqav2/                     VQAv2 questions + annotations JSON, images val2014/COCO_val2014_*.jpg
//! OUT/eval/pope/coco_pope_random.json POPE lines over the same images
//! OUT/tokenizer.json                  the tokenizer, to name it explicitly in the config
//! ```
//! `configs/study/byod.toml` trains and evaluates on exactly these files.
use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use image::RgbImage;
use serde_json::{json, Value};

use crate::image_io::decode_rgb;
use crate::jsonl::open_text;
use crate::layout::DataLayout;
use crate::llava::{write_llava, LlavaSet, Turn};
use crate::vl_eval::prepared::{FASHION_WHAT, POPE_FASHION};
use crate::vl_eval::{EvalSet, QuestionType};
use crate::webdataset::{list_shards, read_shard, ShardBuilder};

const SHARDS: usize = 5;
const PER_SHARD: usize = 100;
const CONVERSATIONS: usize = 120;
const TEXT_FILES: usize = 2;
const DOCS_PER_FILE: usize = 2000;
const EVAL_ITEMS: usize = 40;

/// Counts of what was written, for the command's summary.
#[derive(Debug, Default)]
pub struct ExampleCounts {
    pub samples: usize,
    pub conversations: usize,
    pub documents: usize,
    pub eval_questions: usize,
}

/// Writes the example under `out` from the prepared data of `layout`.
pub fn make_example(layout: &DataLayout, out: &Path) -> Result<ExampleCounts> {
    let mut counts = ExampleCounts::default();
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::copy(layout.tokenizer_json(), out.join("tokenizer.json"))
        .with_context(|| format!("copying {}; run `vlmix data prepare`", layout.tokenizer_json().display()))?;
    counts.samples = write_shards(layout, &out.join("shards"))?;
    counts.conversations = write_llava_set(layout, &out.join("llava"))?;
    counts.documents = write_text(layout, &out.join("text"))?;
    counts.eval_questions = write_eval(layout, &out.join("eval"))?;
    Ok(counts)
}

fn jpeg(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Jpeg).context("encoding JPEG")?;
    Ok(bytes.into_inner())
}

/// DataComp's layout: 9-digit keys (shard * 10^4 + index), `.jpg`, `.txt` and a `.json` with uid,
/// caption and size; the last shard is truncated in the middle of a member.
fn write_shards(layout: &DataLayout, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut samples = Vec::new();
    for shard in list_shards(&layout.images_dir().join("train"))? {
        read_shard(&shard, |item| {
            if let Ok(sample) = item {
                if samples.len() < SHARDS * PER_SHARD {
                    samples.push((sample.image, sample.caption));
                }
            }
            Ok(())
        })?;
        if samples.len() == SHARDS * PER_SHARD {
            break;
        }
    }
    if samples.len() < SHARDS * PER_SHARD {
        bail!("the prepared shards hold {} samples, the example needs {}", samples.len(), SHARDS * PER_SHARD);
    }
    for (s, chunk) in samples.chunks(PER_SHARD).enumerate() {
        let mut shard = ShardBuilder::new();
        for (i, (image, caption)) in chunk.iter().enumerate() {
            let key = format!("{:09}", s * 10_000 + i);
            let meta = json!({"uid": format!("{:032x}", s * 10_000 + i), "key": key, "caption": caption, "url": format!("https://example.org/{key}.jpg"), "status": "success", "width": image.width(), "height": image.height()});
            shard.add(
                &key,
                &[("jpg", &jpeg(image)?), ("txt", caption.as_bytes()), ("json", meta.to_string().as_bytes())],
            )?;
        }
        let mut bytes = shard.finish()?;
        if s == SHARDS - 1 {
            // A download cut off halfway through the shard: the sample being written is lost.
            let middle = format!("{:09}.jpg", s * 10_000 + PER_SHARD / 2);
            let header = bytes
                .windows(middle.len())
                .position(|w| w == middle.as_bytes())
                .context("member header in the shard")?;
            bytes.truncate(header + 512 + 100);
        }
        let path = dir.join(format!("{s:05}.tar"));
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(samples.len())
}

/// LLaVA-Instruct's layout: a JSON array, images relative to an image folder; one record's image is
/// missing (a partial image download).
fn write_llava_set(layout: &DataLayout, dir: &Path) -> Result<usize> {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let set = LlavaSet::read(&layout.instruct_dir().join("llava_instruct.json"), None)?;
    let mut records = Vec::new();
    for (_, record) in set.records.iter().filter(|(_, r)| r.image.is_some()).take(CONVERSATIONS) {
        let source = set.image_path(record).context("filtered to records with images")?;
        let name = source.file_name().context("image file name")?.to_string_lossy().into_owned();
        std::fs::copy(&source, images.join(&name)).with_context(|| format!("copying {}", source.display()))?;
        records.push(crate::llava::LlavaRecord { image: Some(name), ..record.clone() });
    }
    records.insert(
        records.len() / 2,
        crate::llava::LlavaRecord {
            id: "byod-missing-image".into(),
            image: Some("000000999999.jpg".into()),
            conversations: vec![
                Turn { from: "human".into(), value: "<image>\nWhat is shown here?".into() },
                Turn { from: "gpt".into(), value: "A picture that was never downloaded.".into() },
            ],
        },
    );
    write_llava(&dir.join("llava_instruct.json"), &records)?;
    Ok(records.len())
}

/// DCLM's layout: zstd-compressed JSON Lines with `text`, `url` and metadata fields.
fn write_text(layout: &DataLayout, dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = layout.text_documents("train");
    let mut lines = open_text(&source, "documents")?.lines();
    let mut written = 0;
    for f in 0..TEXT_FILES {
        let path = dir.join(format!("shard_{f:08}_processed.jsonl.zst"));
        let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut out = zstd::stream::write::Encoder::new(file, 3)?;
        for _ in 0..DOCS_PER_FILE {
            let Some(line) = lines.next() else { break };
            let doc: Value = serde_json::from_str(&line.with_context(|| format!("reading {}", source.display()))?)?;
            let id = doc["id"].as_str().unwrap_or_default();
            let record = json!({
                "text": doc["text"],
                "url": format!("https://example.org/{id}"),
                "WARC-Date": "2023-01-01T00:00:00Z",
                "metadata": {"source": doc["source"], "Content-Length": doc["text"].as_str().map_or(0, str::len)},
                "language_id_whole_page_fasttext": {"en": 0.95},
            });
            writeln!(out, "{record}")?;
            written += 1;
        }
        out.finish().with_context(|| format!("finishing {}", path.display()))?;
    }
    Ok(written)
}

/// VQAv2 (questions + annotations with ten answers) and POPE files over COCO-named copies of the
/// prepared eval images.
fn write_eval(layout: &DataLayout, dir: &Path) -> Result<usize> {
    let images = dir.join("val2014");
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    let mut coco_names: Vec<(String, String)> = Vec::new();
    let mut coco_name = |image: &str| -> Result<String> {
        if let Some((_, name)) = coco_names.iter().find(|(i, _)| i == image) {
            return Ok(name.clone());
        }
        let name = format!("COCO_val2014_{:012}.jpg", coco_names.len() + 1);
        let bytes = std::fs::read(layout.eval_vl_dir().join(image)).with_context(|| format!("reading {image}"))?;
        std::fs::write(images.join(&name), jpeg(&decode_rgb(&bytes)?)?)?;
        coco_names.push((image.to_string(), name.clone()));
        Ok(name)
    };
    let open = EvalSet::read(&layout.eval_vl_dir().join(format!("{FASHION_WHAT}.jsonl")))?;
    let (mut questions, mut annotations) = (Vec::new(), Vec::new());
    for (i, (_, item)) in open.items.iter().filter(|(_, i)| i.kind == QuestionType::Open).take(EVAL_ITEMS).enumerate() {
        let name = coco_name(&item.image)?;
        let image_id: u64 = name[13..25].parse()?;
        let question_id = image_id * 1000 + i as u64;
        questions.push(json!({"image_id": image_id, "question": item.question, "question_id": question_id}));
        let answers: Vec<Value> =
            (1..=10).map(|a| json!({"answer": item.answers[0], "answer_confidence": "yes", "answer_id": a})).collect();
        annotations.push(json!({"question_type": "what", "multiple_choice_answer": item.answers[0], "answers": answers, "image_id": image_id, "answer_type": "other", "question_id": question_id}));
    }
    let vqa = dir.join("vqav2");
    std::fs::create_dir_all(&vqa)?;
    let header = json!({"info": {"description": "vlmix example in VQAv2's layout"}, "license": {}, "data_type": "mscoco", "data_subtype": "val2014"});
    let mut q = header.clone();
    q["task_type"] = json!("Open-Ended");
    q["questions"] = json!(questions);
    let mut a = header;
    a["annotation_type"] = json!("mscoco");
    a["annotations"] = json!(annotations);
    std::fs::write(vqa.join("v2_OpenEnded_mscoco_val2014_questions.json"), q.to_string())?;
    std::fs::write(vqa.join("v2_mscoco_val2014_annotations.json"), a.to_string())?;

    let yes_no = EvalSet::read(&layout.eval_vl_dir().join(format!("{POPE_FASHION}.jsonl")))?;
    let pope = dir.join("pope");
    std::fs::create_dir_all(&pope)?;
    let mut lines = String::new();
    for (i, (_, item)) in yes_no.items.iter().take(EVAL_ITEMS).enumerate() {
        let line = json!({"question_id": i + 1, "image": coco_name(&item.image)?, "text": item.question, "label": item.answers[0]});
        lines.push_str(&format!("{line}\n"));
    }
    std::fs::write(pope.join("coco_pope_random.json"), lines)?;
    Ok(questions.len() + yes_no.items.len().min(EVAL_ITEMS))
}
