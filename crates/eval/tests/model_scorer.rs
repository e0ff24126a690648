//! The real-model scorer against separate, unbatched computations on a tiny random model.

use std::path::{Path, PathBuf};
use tempfile::TempDir;
use vlmix_data::packing::{Sequence, SequenceKind};
use vlmix_data::sequence::{ImageText, VlmSequence};
use vlmix_data::tokenizer::TextTokenizer;
use vlmix_data::vlm_batch::{ImageSlot, VlmBatch};
use vlmix_engine::params::ParamStore;
use vlmix_eval::model_scorer::{ImageFeatures, ModelScorer, ScoredModel};
use vlmix_eval::{evaluate_files, Answer, Decoding, EvalOptions, ImageRef, Request, Scorer};
use vlmix_models::lm::{Lm, LmConfig, LmInput};
use vlmix_models::vision::encoder::ImageEncoder;
use vlmix_models::vision::feature_cache::FeatureCache;
use vlmix_models::vision::preprocess::{Preprocess, ResizeMode};
use vlmix_models::vision::resample::Resample;
use vlmix_models::vlm::Vlm;

const SEED: u64 = 7;
const IMAGE_TOKENS: usize = 3;
const FEATURE_WIDTH: usize = 8;

/// A deterministic stand-in for a frozen encoder: per-channel means of a 4x4 thumbnail, scaled per token.
struct ThumbnailEncoder {
    preprocess: Preprocess,
}

impl ThumbnailEncoder {
    fn new() -> Self {
        let preprocess = Preprocess {
            resize: ResizeMode::Exact { height: 4, width: 4 },
            resample: Resample::Bilinear,
            rescale: 1.0 / 255.0,
            mean: [0.5; 3],
            std: [0.25; 3],
        };
        Self { preprocess }
    }
}

impl ImageEncoder for ThumbnailEncoder {
    fn id(&self) -> &str {
        "test-thumbnail-encoder"
    }
    fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }
    fn tokens(&self) -> usize {
        IMAGE_TOKENS
    }
    fn width(&self) -> usize {
        FEATURE_WIDTH
    }
    fn encode(&self, pixels: &[f32], batch: usize) -> anyhow::Result<Vec<f32>> {
        let per_image = pixels.len() / batch;
        let mut out = Vec::with_capacity(batch * IMAGE_TOKENS * FEATURE_WIDTH);
        for image in pixels.chunks(per_image) {
            let plane = per_image / 3;
            for t in 0..IMAGE_TOKENS {
                for c in 0..FEATURE_WIDTH {
                    let channel = &image[(c % 3) * plane..(c % 3 + 1) * plane];
                    let px = channel[(t * 5 + c) % plane];
                    out.push(channel.iter().sum::<f32>() / plane as f32 * (t + 1) as f32 + px * 0.5);
                }
            }
        }
        Ok(out)
    }
}

const SENTENCES: &[&str] = &[
    "The cat sat on the mat and looked at the red ball.",
    "Question: What colour is the ball?\nAnswer: red\n",
    "A dog runs in the green park with a blue frisbee.",
    "Is there a cat in the picture? yes. Is there a dog? no.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
];

fn tokenizer() -> TextTokenizer {
    TextTokenizer::train(SENTENCES.iter().copied(), 320).unwrap()
}

fn config() -> LmConfig {
    LmConfig::preset("tiny").unwrap()
}

fn new_vlm() -> (Vlm, ParamStore) {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let vlm = Vlm::new(config(), FEATURE_WIDTH, &mut params, SEED).unwrap();
    (vlm, params)
}

fn new_lm() -> (Lm, ParamStore) {
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let lm = Lm::new(config(), &mut params, SEED).unwrap();
    (lm, params)
}

struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, colour) in [("red.png", [200, 30, 30]), ("blue.png", [20, 40, 220])] {
            let img = image::RgbImage::from_fn(9, 7, |x, y| {
                image::Rgb([colour[0], colour[1].wrapping_add((x * 9) as u8), colour[2].wrapping_sub((y * 5) as u8)])
            });
            img.save(dir.path().join(name)).unwrap();
        }
        Self { dir }
    }

    fn image(&self, name: &str) -> ImageRef {
        ImageRef { key: name.to_string(), path: self.dir.path().join(name) }
    }

    fn features(&self) -> ImageFeatures {
        ImageFeatures::open(Box::new(ThumbnailEncoder::new()), &self.dir.path().join("cache")).unwrap()
    }

    /// Features as the unbatched path sees them: a separate cache, so values go through f16 the same way.
    fn reference_features(&self, name: &str) -> Vec<f32> {
        let encoder = ThumbnailEncoder::new();
        let mut cache = FeatureCache::open(&self.dir.path().join("reference-cache"), &encoder).unwrap();
        let bytes = std::fs::read(self.dir.path().join(name)).unwrap();
        let img = vlmix_data::image_io::decode_rgb(&bytes).unwrap();
        cache.features(&encoder, &[&img]).unwrap()
    }

    fn vision_scorer(&self) -> ModelScorer {
        let (vlm, params) = new_vlm();
        ModelScorer::new(ScoredModel::Vision(vlm), params, tokenizer(), Some(self.features())).unwrap()
    }
}

fn text_scorer() -> ModelScorer {
    let (lm, params) = new_lm();
    ModelScorer::new(ScoredModel::Text(lm), params, tokenizer(), None).unwrap()
}

/// Per-token NLL and argmax of one unbatched VLM sequence (`features` empty for text).
fn reference_vlm_path(ids: &[u32], n_image: usize, features: &[f32]) -> (Vec<f32>, Vec<u32>) {
    let (mut vlm, params) = new_vlm();
    let seq = ids.len() - 1;
    let batch = VlmBatch {
        batch: 1,
        seq,
        inputs: ids[..seq].to_vec(),
        targets: ids[1..].to_vec(),
        loss_mask: vec![1.0; seq],
        slots: if n_image > 0 { vec![ImageSlot { at: 0, image: 0 }] } else { vec![] },
        n_image_tokens: n_image,
        features: features.to_vec(),
        ..Default::default()
    };
    let nll = vlm.token_nll(&params, &batch).unwrap().to_vec();
    let vocab = config().vocab;
    let logits = vlm.logits(&params, &batch).unwrap();
    let argmax =
        logits.chunks(vocab).map(|row| (0..vocab).fold(0, |b, i| if row[i] > row[b] { i } else { b }) as u32).collect();
    (nll, argmax)
}

/// Sum of `-nll` and all-argmax over the last `n_scored` targets of `ids`.
fn reference_score(ids: &[u32], n_image: usize, features: &[f32], n_scored: usize) -> (f64, bool) {
    let (nll, argmax) = reference_vlm_path(ids, n_image, features);
    let from = ids.len() - 1 - n_scored;
    let sum = -nll[from..].iter().map(|&x| x as f64).sum::<f64>();
    let greedy = (from..ids.len() - 1).all(|p| argmax[p] == ids[p + 1]);
    (sum, greedy)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + a.abs().max(b.abs()))
}

#[test]
fn text_loglikelihood_is_the_sum_of_unbatched_token_nlls() {
    let tok = tokenizer();
    let mut scorer = text_scorer();
    let (context, continuation) = ("The cat sat on the", " mat and looked");
    let ll = scorer.loglikelihood(None, context, continuation).unwrap();

    let cont = tok.encode(continuation).unwrap();
    let mut ids = vec![tok.special.eos];
    ids.extend(tok.encode(context).unwrap());
    ids.extend(&cont);
    let (want, greedy) = reference_score(&ids, 0, &[], cont.len());
    assert_eq!(ll.n_tokens, cont.len());
    assert!(close(ll.sum_logprob, want), "{} vs {want}", ll.sum_logprob);
    assert!(ll.sum_logprob < 0.0);
    assert_eq!(ll.is_greedy, greedy);
}

#[test]
fn image_loglikelihood_puts_the_image_first_and_matches_the_unbatched_vlm() {
    let fx = Fixture::new();
    let tok = tokenizer();
    let mut scorer = fx.vision_scorer();
    let prompt = "<image>\nQuestion: What colour is the ball?\nAnswer:";
    let ll = scorer.loglikelihood(Some(&fx.image("red.png")), prompt, " red").unwrap();

    let cont = tok.encode(" red").unwrap();
    let mut ids = vec![tok.special.image; IMAGE_TOKENS];
    ids.extend(tok.encode("\nQuestion: What colour is the ball?\nAnswer:").unwrap());
    ids.extend(&cont);
    let (want, greedy) = reference_score(&ids, IMAGE_TOKENS, &fx.reference_features("red.png"), cont.len());
    assert!(close(ll.sum_logprob, want), "{} vs {want}", ll.sum_logprob);
    assert_eq!(ll.is_greedy, greedy);

    let other = scorer.loglikelihood(Some(&fx.image("blue.png")), prompt, " red").unwrap();
    assert!((other.sum_logprob - ll.sum_logprob).abs() > 1e-6, "the image must change the score");
}

#[test]
fn batched_choices_equal_one_at_a_time() {
    let fx = Fixture::new();
    let choices: Vec<String> =
        [" red", " a blue frisbee in the park", " no", ""].iter().map(|s| s.to_string()).collect();
    let mut scorer = fx.vision_scorer();
    for image in [None, Some(fx.image("blue.png"))] {
        let context =
            if image.is_some() { "<image>\nQuestion: What is it?\nAnswer:" } else { "Question: What is it?\nAnswer:" };
        let batched = scorer.loglikelihoods(image.as_ref(), context, &choices).unwrap();
        for (choice, b) in choices.iter().zip(&batched) {
            let single = scorer.loglikelihood(image.as_ref(), context, choice).unwrap();
            assert!(
                close(single.sum_logprob, b.sum_logprob),
                "{choice:?}: {} vs {}",
                single.sum_logprob,
                b.sum_logprob
            );
            assert_eq!(single.n_tokens, b.n_tokens);
            assert_eq!(single.is_greedy, b.is_greedy);
        }
        assert_eq!(batched[3].n_tokens, 0, "an empty continuation scores nothing");
    }
}

#[test]
fn answers_to_many_items_at_once_equal_one_at_a_time() {
    // Rows of different items, images and lengths share forward passes and generations run in
    // lockstep; every answer must be the one the item gets alone.
    let fx = Fixture::new();
    let (red, blue) = (fx.image("red.png"), fx.image("blue.png"));
    let colours: Vec<String> = [" red", " blue", " a green frisbee"].iter().map(|s| s.to_string()).collect();
    let yes_no: Vec<String> = [" Yes.", " No."].iter().map(|s| s.to_string()).collect();
    let question = "<image>\nQuestion: What colour is the ball?\nAnswer:";
    let requests = [
        Request::Rank { image: Some(&red), context: question, continuations: &colours },
        Request::Generate { image: Some(&blue), prompt: question, max_tokens: 7 },
        Request::Rank { image: None, context: "The cat sat on the", continuations: &colours },
        Request::Rank { image: Some(&blue), context: "<image>\nIs there a ball?\nAnswer:", continuations: &yes_no },
        Request::Generate { image: Some(&red), prompt: "", max_tokens: 5 },
        Request::Generate { image: None, prompt: "The cat sat", max_tokens: 9 },
        Request::Rank { image: Some(&red), context: "<image>\nIs there a ball?\nAnswer:", continuations: &yes_no },
    ];
    let mut scorer = fx.vision_scorer();
    let together = scorer.answer_all(&requests).unwrap();
    assert_eq!(together.len(), requests.len());
    let mut alone = fx.vision_scorer();
    for (request, answer) in requests.iter().zip(&together) {
        match (*request, answer) {
            (Request::Rank { image, context, continuations }, Answer::Ranked(lls)) => {
                let want = alone.loglikelihoods(image, context, continuations).unwrap();
                for (w, got) in want.iter().zip(lls) {
                    assert!(
                        close(w.sum_logprob, got.sum_logprob),
                        "{context:?}: {} vs {}",
                        w.sum_logprob,
                        got.sum_logprob
                    );
                    assert_eq!((w.n_tokens, w.is_greedy), (got.n_tokens, got.is_greedy));
                }
            }
            (Request::Generate { image, prompt, max_tokens }, Answer::Generated(text)) => {
                assert_eq!(*text, alone.generate(image, prompt, max_tokens).unwrap(), "{prompt:?}");
            }
            other => panic!("answer of the wrong kind: {other:?}"),
        }
    }
    let Answer::Generated(caption) = &together[4] else { unreachable!() };
    let want = reference_greedy(
        vec![tokenizer().special.image; IMAGE_TOKENS],
        IMAGE_TOKENS,
        &fx.reference_features("red.png"),
        5,
    );
    assert_eq!(*caption, want, "lockstep generation follows the unbatched argmax path");
}

#[test]
fn trailing_space_of_the_context_moves_to_the_continuation() {
    let mut scorer = text_scorer();
    let a = scorer.loglikelihood(None, "The cat sat on the ", "mat").unwrap();
    let b = scorer.loglikelihood(None, "The cat sat on the", " mat").unwrap();
    assert_eq!(a, b);
}

#[test]
fn long_context_is_cut_from_the_left_and_the_image_kept() {
    let fx = Fixture::new();
    let tok = tokenizer();
    let mut scorer = fx.vision_scorer();
    let question = "The quick brown fox jumps over the lazy dog near the river bank. ".repeat(8);
    let prompt = format!("<image>\n{question}\nAnswer:");
    let ll = scorer.loglikelihood(Some(&fx.image("red.png")), &prompt, " red").unwrap();

    let cont = tok.encode(" red").unwrap();
    let context = tok.encode(&prompt.replace("<image>", "")).unwrap();
    let seq_len = config().seq_len;
    assert!(IMAGE_TOKENS + context.len() + cont.len() > seq_len + 1, "the test needs an over-long prompt");
    let keep = seq_len + 1 - IMAGE_TOKENS - cont.len();
    let mut ids = vec![tok.special.image; IMAGE_TOKENS];
    ids.extend(&context[context.len() - keep..]);
    ids.extend(&cont);
    let (want, _) = reference_score(&ids, IMAGE_TOKENS, &fx.reference_features("red.png"), cont.len());
    assert!(close(ll.sum_logprob, want), "{} vs {want}", ll.sum_logprob);
}

/// Greedy decoding by hand: one unbatched forward per token, stopping at EOS or a newline.
fn reference_greedy(prefix: Vec<u32>, n_image: usize, features: &[f32], max_tokens: usize) -> String {
    let tok = tokenizer();
    let mut ids = prefix;
    let mut generated = Vec::new();
    for _ in 0..max_tokens {
        ids.push(tok.special.pad);
        let (_, argmax) = reference_vlm_path(&ids, n_image, features);
        ids.pop();
        let next = argmax[ids.len() - 1];
        if next == tok.special.eos {
            break;
        }
        generated.push(next);
        ids.push(next);
        let text = tok.decode(&generated).unwrap();
        if let Some(i) = text.find('\n') {
            return text[..i].to_string();
        }
    }
    tok.decode(&generated).unwrap()
}

#[test]
fn greedy_generation_follows_the_argmax_path_and_streams_it() {
    let fx = Fixture::new();
    let tok = tokenizer();
    let mut scorer = fx.vision_scorer();
    let prompt = "<image>\nQuestion: What colour is the ball?\nAnswer:";
    let mut streamed = String::new();
    let text = scorer
        .generate_with(Some(&fx.image("red.png")), prompt, &Decoding::greedy(12), &mut |piece| streamed.push_str(piece))
        .unwrap();
    assert_eq!(streamed, text);
    assert!(!text.is_empty() && !text.contains('\n'), "{text:?}");

    let mut prefix = vec![tok.special.image; IMAGE_TOKENS];
    prefix.extend(tok.encode("\nQuestion: What colour is the ball?\nAnswer:").unwrap());
    assert_eq!(text, reference_greedy(prefix, IMAGE_TOKENS, &fx.reference_features("red.png"), 12));
    assert_eq!(scorer.generate(Some(&fx.image("red.png")), prompt, 12).unwrap(), text);

    let mut text_only = text_scorer();
    let generated = text_only.generate(None, "The cat sat", 10).unwrap();
    let mut prefix = vec![tok.special.eos];
    prefix.extend(tok.encode("The cat sat").unwrap());
    assert_eq!(generated, reference_greedy(prefix, 0, &[], 10));
}

#[test]
fn caption_generation_starts_right_after_the_image() {
    let fx = Fixture::new();
    let mut scorer = fx.vision_scorer();
    let caption = scorer.generate(Some(&fx.image("blue.png")), "", 6).unwrap();
    assert!(!caption.is_empty(), "the seeded random model produces some text");
    assert_eq!(
        caption,
        reference_greedy(
            vec![tokenizer().special.image; IMAGE_TOKENS],
            IMAGE_TOKENS,
            &fx.reference_features("blue.png"),
            6
        )
    );
}

#[test]
fn sampling_is_seeded_and_top_k_one_is_greedy() {
    let fx = Fixture::new();
    let mut scorer = fx.vision_scorer();
    let image = fx.image("red.png");
    let sample = |scorer: &mut ModelScorer, seed| {
        let decoding = Decoding { max_tokens: 10, temperature: 1.5, top_k: Some(50), seed };
        scorer.generate_with(Some(&image), "<image>", &decoding, &mut |_| {}).unwrap()
    };
    let a = sample(&mut scorer, 1);
    assert_eq!(a, sample(&mut scorer, 1));
    let outputs: std::collections::HashSet<String> = (0..6).map(|s| sample(&mut scorer, s)).collect();
    assert!(outputs.len() > 1, "different seeds should give different samples from a random model");

    let top1 = Decoding { max_tokens: 10, temperature: 0.7, top_k: Some(1), seed: 3 };
    assert_eq!(
        scorer.generate_with(Some(&image), "<image>", &top1, &mut |_| {}).unwrap(),
        scorer.generate(Some(&image), "<image>", 10).unwrap()
    );
    let bad = Decoding { max_tokens: 3, temperature: -1.0, top_k: None, seed: 0 };
    assert!(scorer.generate_with(Some(&image), "", &bad, &mut |_| {}).unwrap_err().to_string().contains("temperature"));
}

#[test]
fn text_only_model_refuses_image_items_naming_the_task() {
    let fx = Fixture::new();
    let tasks = fx.dir.path().join("tasks.jsonl");
    let line = serde_json::json!({"id": "q1", "task": "colours", "image": "red.png", "question": "What colour?", "answers": ["red"], "type": "open"});
    std::fs::write(&tasks, format!("{line}\n")).unwrap();
    let mut scorer = text_scorer();
    let err = format!("{:#}", evaluate_files(&mut scorer, &[tasks], &EvalOptions::default()).unwrap_err());
    assert!(err.contains("colours") && err.contains("text-only"), "{err}");
}

#[test]
fn vision_model_without_an_encoder_says_so() {
    let fx = Fixture::new();
    let (vlm, params) = new_vlm();
    let mut scorer = ModelScorer::new(ScoredModel::Vision(vlm), params, tokenizer(), None).unwrap();
    let err = format!("{:#}", scorer.generate(Some(&fx.image("red.png")), "<image>", 3).unwrap_err());
    assert!(err.contains("encoder"), "{err}");
}

#[test]
fn a_continuation_longer_than_the_window_is_scored_on_its_tail() {
    let tok = tokenizer();
    let mut scorer = text_scorer();
    let continuation = format!(" {}", SENTENCES.join(" ").repeat(3));
    let cont = tok.encode(&continuation).unwrap();
    let seq = config().seq_len;
    assert!(cont.len() > seq, "the test needs a continuation longer than the window");
    let ll = scorer.loglikelihood(None, "The cat", &continuation).unwrap();
    assert_eq!(ll.n_tokens, seq, "the tail that fits is scored");
    // Same as scoring the last `seq` tokens after the window's worth of preceding tokens.
    let mut all = vec![tok.special.eos];
    all.extend(tok.encode("The cat").unwrap());
    all.extend(&cont);
    let window = &all[all.len() - seq - 1..];
    let (want, _) = reference_score(window, 0, &[], seq);
    assert!(close(ll.sum_logprob, want), "{} vs {want}", ll.sum_logprob);
}

fn save_stage(dir: &Path, params: &ParamStore) -> PathBuf {
    std::fs::create_dir_all(dir.join("checkpoints/step-00000004")).unwrap();
    std::fs::write(dir.join("model.toml"), config().to_toml()).unwrap();
    std::fs::write(dir.join("checkpoints/latest"), "step-00000004").unwrap();
    let step = dir.join("checkpoints/step-00000004");
    params.save_safetensors(&step.join("model.safetensors")).unwrap();
    step
}

#[test]
fn checkpoints_load_as_vlm_or_text_lm_by_their_tensors() {
    let fx = Fixture::new();
    let (_, vlm_params) = new_vlm();
    let (_, lm_params) = new_lm();
    let vision_stage = fx.dir.path().join("cooldown");
    let step = save_stage(&vision_stage, &vlm_params);
    let text_stage = fx.dir.path().join("pretrain");
    save_stage(&text_stage, &lm_params);

    let mut from_step =
        ModelScorer::from_checkpoint(vlmix_engine::Cpu::new().unwrap(), &step, tokenizer(), Some(fx.features()))
            .unwrap();
    let mut from_stage = ModelScorer::from_checkpoint(
        vlmix_engine::Cpu::new().unwrap(),
        &vision_stage,
        tokenizer(),
        Some(fx.features()),
    )
    .unwrap();
    assert!(from_step.is_vision());
    let image = fx.image("red.png");
    let want = fx.vision_scorer().loglikelihood(Some(&image), "<image>", " red").unwrap();
    assert_eq!(from_step.loglikelihood(Some(&image), "<image>", " red").unwrap(), want);
    assert_eq!(from_stage.loglikelihood(Some(&image), "<image>", " red").unwrap(), want);

    let mut text =
        ModelScorer::from_checkpoint(vlmix_engine::Cpu::new().unwrap(), &text_stage, tokenizer(), Some(fx.features()))
            .unwrap();
    assert!(!text.is_vision());
    assert_eq!(
        text.loglikelihood(None, SENTENCES[0], SENTENCES[1]).unwrap(),
        text_scorer().loglikelihood(None, SENTENCES[0], SENTENCES[1]).unwrap()
    );

    let err = ModelScorer::from_checkpoint(vlmix_engine::Cpu::new().unwrap(), fx.dir.path(), tokenizer(), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a checkpoint"), "{err}");
}

#[test]
fn encoder_width_must_match_the_projector() {
    let fx = Fixture::new();
    let mut params = ParamStore::new(vlmix_engine::Cpu::new().unwrap());
    let vlm = Vlm::new(config(), FEATURE_WIDTH + 1, &mut params, SEED).unwrap();
    let err = ModelScorer::new(ScoredModel::Vision(vlm), params, tokenizer(), Some(fx.features())).err().unwrap();
    assert!(err.to_string().contains("width"), "{err}");
}

#[test]
fn lm_input_reference_agrees_with_text_model_token_nll() {
    // The text scorer's unbatched reference goes through the VLM path with no images; check it is the
    // plain LM's own token_nll so the comparisons above test against the LM itself.
    let tok = tokenizer();
    let mut ids = vec![tok.special.eos];
    ids.extend(tok.encode(SENTENCES[2]).unwrap());
    let (nll, _) = reference_vlm_path(&ids, 0, &[]);
    let (mut lm, params) = new_lm();
    let seq = ids.len() - 1;
    let direct = lm.token_nll(&params, &LmInput::tokens(1, seq, &ids[..seq]), &ids[1..]).unwrap();
    assert_eq!(nll, direct);
}

#[test]
fn one_example_is_the_same_row_in_packing_the_vlm_forward_and_the_scorer() {
    let fixture = Fixture::new();
    let tok = tokenizer();
    let (context, answer) = ("Question: What colour is the ball?\nAnswer:", " red");
    let image = fixture.image("red.png");
    let mut scorer = fixture.vision_scorer();
    let scored = scorer.choice_rows(true, context, &[answer.to_string()]).unwrap().remove(0).unwrap();

    // Packing: the same example as instruction data, trained on the answer only.
    let (ctx, ans) = (tok.encode(context).unwrap(), tok.encode(answer).unwrap());
    let loss = [vec![false; ctx.len()], vec![true; ans.len()]].concat();
    let text = ImageText { tokens: [ctx, ans.clone()].concat(), loss };
    let seq_len = config().seq_len;
    let layout = VlmSequence::new(seq_len, IMAGE_TOKENS, tok.special).unwrap();
    let packed = Sequence::image(SequenceKind::Instruct, 0, &text, &layout).row;

    // The scorer's row is the training row up to its last answer token; training goes on to EOS, then pads.
    let n = scored.inputs.len();
    assert_eq!(scored.images, [0]);
    assert_eq!(packed.images, scored.images);
    assert_eq!(scored.inputs, packed.inputs[..n]);
    assert_eq!(scored.targets, packed.targets[..n]);
    assert_eq!(scored.loss_mask, packed.loss_mask[..n]);
    assert_eq!(scored.loss_mask.iter().filter(|&&m| m).count(), ans.len());
    assert_eq!((packed.targets[n], packed.loss_mask[n]), (tok.special.eos, true));
    assert!(packed.loss_mask[n + 1..].iter().all(|&m| !m));
    assert_eq!(packed.inputs[n..n + 2], [*ans.last().unwrap(), tok.special.eos]);
    assert!(packed.inputs[n + 2..].iter().all(|&t| t == tok.special.pad));

    // The VLM forward over the training batch of that row gives the scorer's log-likelihood.
    let mut batch = VlmBatch::new(seq_len, IMAGE_TOKENS);
    let slot_image = batch.push_image(&fixture.reference_features("red.png"));
    batch.push_row(&packed, &[slot_image], tok.special.pad).unwrap();
    assert_eq!(batch.slots, [ImageSlot { at: 0, image: 0 }]);
    let (mut vlm, params) = new_vlm();
    let nll = vlm.token_nll(&params, &batch).unwrap();
    let trained: f64 = (0..n).filter(|&p| packed.loss_mask[p]).map(|p| -nll[p] as f64).sum();
    let ll = scorer.loglikelihood(Some(&image), context, answer).unwrap();
    assert!(close(trained, ll.sum_logprob), "training row {trained} vs scorer {}", ll.sum_logprob);
}
