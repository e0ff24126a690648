//! VQAv2's official answer normalisation and accuracy (GT-Vision-Lab `vqaEval.py`), reimplemented.
//!
//! Kept bit-for-bit with the official script's behaviour, quirks included, so scores compare with
//! published VQAv2 numbers: punctuation is deleted (not spaced) when the text contains a "digit,digit"
//! pattern or the mark touches a space; a period is removed unless a digit follows it, at most 32
//! times (the script passes `re.UNICODE` where `count` goes); number words zero..ten become digits;
//! articles are dropped; unapostrophised contractions gain their apostrophe.

/// Punctuation the official script deletes or replaces by a space (periods handled separately).
const PUNCTUATION: [char; 21] =
    [';', '/', '[', ']', '"', '{', '}', '(', ')', '=', '+', '\\', '_', '-', '>', '<', '@', '`', ',', '?', '!'];

/// The official script strips at most this many periods (see module docs).
const MAX_PERIODS_STRIPPED: usize = 32;

const NUMBER_WORDS: [(&str, &str); 12] = [
    ("none", "0"),
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
];

const ARTICLES: [&str; 3] = ["a", "an", "the"];

/// The official contraction table, including its entries that can never match after lower-casing
/// ("Im", "Ive", ...) and its one backwards entry ("somebody'd" -> "somebodyd").
const CONTRACTIONS: [(&str, &str); 120] = [
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn't've"),
    ("couldnt've", "couldn't've"),
    ("didnt", "didn't"),
    ("doesnt", "doesn't"),
    ("dont", "don't"),
    ("hadnt", "hadn't"),
    ("hadnt've", "hadn't've"),
    ("hadn'tve", "hadn't've"),
    ("hasnt", "hasn't"),
    ("havent", "haven't"),
    ("hed", "he'd"),
    ("hed've", "he'd've"),
    ("he'dve", "he'd've"),
    ("hes", "he's"),
    ("howd", "how'd"),
    ("howll", "how'll"),
    ("hows", "how's"),
    ("Id've", "I'd've"),
    ("I'dve", "I'd've"),
    ("Im", "I'm"),
    ("Ive", "I've"),
    ("isnt", "isn't"),
    ("itd", "it'd"),
    ("itd've", "it'd've"),
    ("it'dve", "it'd've"),
    ("itll", "it'll"),
    ("let's", "let's"),
    ("maam", "ma'am"),
    ("mightnt", "mightn't"),
    ("mightnt've", "mightn't've"),
    ("mightn'tve", "mightn't've"),
    ("mightve", "might've"),
    ("mustnt", "mustn't"),
    ("mustve", "must've"),
    ("neednt", "needn't"),
    ("notve", "not've"),
    ("oclock", "o'clock"),
    ("oughtnt", "oughtn't"),
    ("ow's'at", "'ow's'at"),
    ("'ows'at", "'ow's'at"),
    ("'ow'sat", "'ow's'at"),
    ("shant", "shan't"),
    ("shed've", "she'd've"),
    ("she'dve", "she'd've"),
    ("she's", "she's"),
    ("shouldve", "should've"),
    ("shouldnt", "shouldn't"),
    ("shouldnt've", "shouldn't've"),
    ("shouldn'tve", "shouldn't've"),
    ("somebody'd", "somebodyd"),
    ("somebodyd've", "somebody'd've"),
    ("somebody'dve", "somebody'd've"),
    ("somebodyll", "somebody'll"),
    ("somebodys", "somebody's"),
    ("someoned", "someone'd"),
    ("someoned've", "someone'd've"),
    ("someone'dve", "someone'd've"),
    ("someonell", "someone'll"),
    ("someones", "someone's"),
    ("somethingd", "something'd"),
    ("somethingd've", "something'd've"),
    ("something'dve", "something'd've"),
    ("somethingll", "something'll"),
    ("thats", "that's"),
    ("thered", "there'd"),
    ("thered've", "there'd've"),
    ("there'dve", "there'd've"),
    ("therere", "there're"),
    ("theres", "there's"),
    ("theyd", "they'd"),
    ("theyd've", "they'd've"),
    ("they'dve", "they'd've"),
    ("theyll", "they'll"),
    ("theyre", "they're"),
    ("theyve", "they've"),
    ("twas", "'twas"),
    ("wasnt", "wasn't"),
    ("wed've", "we'd've"),
    ("we'dve", "we'd've"),
    ("weve", "we've"),
    ("werent", "weren't"),
    ("whatll", "what'll"),
    ("whatre", "what're"),
    ("whats", "what's"),
    ("whatve", "what've"),
    ("whens", "when's"),
    ("whered", "where'd"),
    ("wheres", "where's"),
    ("whereve", "where've"),
    ("whod", "who'd"),
    ("whod've", "who'd've"),
    ("who'dve", "who'd've"),
    ("wholl", "who'll"),
    ("whos", "who's"),
    ("whove", "who've"),
    ("whyll", "why'll"),
    ("whyre", "why're"),
    ("whys", "why's"),
    ("wont", "won't"),
    ("wouldve", "would've"),
    ("wouldnt", "wouldn't"),
    ("wouldnt've", "wouldn't've"),
    ("wouldn'tve", "wouldn't've"),
    ("yall", "y'all"),
    ("yall'll", "y'all'll"),
    ("y'allll", "y'all'll"),
    ("yall'd've", "y'all'd've"),
    ("y'alld've", "y'all'd've"),
    ("y'all'dve", "y'all'd've"),
    ("youd", "you'd"),
    ("youd've", "you'd've"),
    ("you'dve", "you'd've"),
    ("youll", "you'll"),
    ("youre", "you're"),
    ("youve", "you've"),
];

/// Normalises an answer exactly as VQAv2's evaluation normalises a model's answer.
pub fn normalize_answer(answer: &str) -> String {
    let flat = answer.replace(['\n', '\t'], " ");
    digits_and_articles(&punctuation(flat.trim()))
}

/// VQAv2 accuracy of `prediction` against the annotators' `answers`.
///
/// With one answer: exact match after normalisation. With several (VQAv2 has ten annotators): the
/// official average, over each annotator left out in turn, of min(1, #other annotators who gave the
/// prediction / 3); ten answers with 3 matches score 0.9, with 4 or more 1.0. Gold answers are
/// normalised too, because ours are not pre-cleaned the way VQAv2's annotations are.
pub fn vqa_accuracy(prediction: &str, answers: &[String]) -> f64 {
    let predicted = normalize_answer(prediction);
    let gold: Vec<String> = answers.iter().map(|a| normalize_answer(a)).collect();
    if gold.len() == 1 {
        return if gold[0] == predicted { 1.0 } else { 0.0 };
    }
    if gold.is_empty() {
        return 0.0;
    }
    let matches = gold.iter().filter(|g| **g == predicted).count();
    let per_left_out: f64 = gold
        .iter()
        .map(|left_out| {
            let others = matches - usize::from(*left_out == predicted);
            (others as f64 / 3.0).min(1.0)
        })
        .sum();
    per_left_out / gold.len() as f64
}

fn punctuation(text: &str) -> String {
    let delete_marks = has_digit_comma_digit(text);
    let mut out = text.to_string();
    for mark in PUNCTUATION {
        let touches_space = text.contains(&format!("{mark} ")) || text.contains(&format!(" {mark}"));
        let replacement = if touches_space || delete_marks { "" } else { " " };
        out = out.replace(mark, replacement);
    }
    strip_periods(&out)
}

fn has_digit_comma_digit(text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars.windows(3).any(|w| w[0].is_ascii_digit() && w[1] == ',' && w[2].is_ascii_digit())
}

/// Removes periods not followed by a digit, at most [`MAX_PERIODS_STRIPPED`] of them.
fn strip_periods(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut stripped = 0;
    for (i, &c) in chars.iter().enumerate() {
        let digit_follows = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c == '.' && !digit_follows && stripped < MAX_PERIODS_STRIPPED {
            stripped += 1;
            continue;
        }
        out.push(c);
    }
    out
}

fn digits_and_articles(text: &str) -> String {
    let lower = text.to_lowercase();
    let words: Vec<&str> = lower
        .split_whitespace()
        .map(|w| NUMBER_WORDS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .filter(|w| !ARTICLES.contains(w))
        .map(|w| CONTRACTIONS.iter().find(|(k, _)| *k == w).map_or(w, |(_, v)| *v))
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn normalises_case_articles_numbers_and_contractions() {
        assert_eq!(normalize_answer("  The Two dogs\n"), "2 dogs");
        assert_eq!(normalize_answer("an apple"), "apple");
        assert_eq!(normalize_answer("dont know"), "don't know");
        assert_eq!(normalize_answer("none"), "0");
    }

    #[test]
    fn punctuation_is_spaced_or_deleted_like_the_official_script() {
        // Mark not touching a space: replaced by a space, then words re-joined.
        assert_eq!(normalize_answer("black-and-white"), "black and white");
        // Mark touching a space: deleted.
        assert_eq!(normalize_answer("yes !"), "yes");
        // A digit,digit pattern anywhere makes every mark deleted.
        assert_eq!(normalize_answer("1,000 red-ish"), "1000 redish");
        // Periods go unless a digit follows.
        assert_eq!(normalize_answer("3.5 m."), "3.5 m");
        assert_eq!(normalize_answer("Yes."), "yes");
    }

    #[test]
    fn single_answer_is_exact_match_after_normalisation() {
        assert_eq!(vqa_accuracy("Two", &strings(&["2"])), 1.0);
        assert_eq!(vqa_accuracy("three", &strings(&["2"])), 0.0);
    }

    #[test]
    fn ten_annotators_use_the_leave_one_out_average() {
        let answers = |n_match: usize| -> Vec<String> {
            (0..10).map(|i| if i < n_match { "red".to_string() } else { format!("other{i}") }).collect()
        };
        // n matches: n annotators left out see n-1 others, 10-n see n; each capped at 3.
        assert!((vqa_accuracy("Red.", &answers(1)) - 0.3).abs() < 1e-12);
        assert!((vqa_accuracy("red", &answers(2)) - 0.6).abs() < 1e-12);
        assert!((vqa_accuracy("red", &answers(3)) - 0.9).abs() < 1e-12);
        assert_eq!(vqa_accuracy("the red", &answers(4)), 1.0);
        assert_eq!(vqa_accuracy("blue", &answers(4)), 0.0);
    }

    /// Expected outputs produced by running the official `processPunctuation` + `processDigitArticle`
    /// (Python) on the same inputs.
    #[test]
    fn matches_the_official_script_on_awkward_inputs() {
        let cases = [
            ("The cat's toy.", "cat's toy"),
            ("isnt it?", "isn't it"),
            ("Yes, it is!", "yes it is"),
            ("1,000,000", "1000000"),
            ("two-way street", "2 way street"),
            ("a.b.c", "abc"),
            ("Mr. Smith (Jr.)", "mr smith jr"),
            ("3 dogs; 2 cats", "3 dogs 2 cats"),
            ("whats up", "what's up"),
            ("\tNONE \n", "0"),
            ("e-mail@home.com", "e mail homecom"),
            ("it's 10:30 p.m.", "it's 10:30 pm"),
            ("50/50", "50 50"),
            ("...", ""),
            ("hes  not here", "he's not here"),
            ("Id've", "id've"),
            ("A / B", "b"),
            ("<b>bold</b>", "b bold b"),
            ("ten.5", "ten.5"),
            (". . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . . x", ". . . . . . . . x"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_answer(input), expected, "input {input:?}");
        }
    }
}
