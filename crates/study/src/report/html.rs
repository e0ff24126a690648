//! The report page: one self-contained HTML file (inline CSS) that shows the figures beside it.

use super::figures::Figure;
use super::findings::Finding;
use super::results_table::{percent, DataRecord, ResultRow, ResultsTable, TaskScore};
use super::Protocol;
use crate::config::VisionMeasure;
use std::fmt::Write;
use vlmix_eval::Interval;

const STYLE: &str = "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;margin:2em auto;max-width:1800px;padding:0 1.5em;color:#222}\
h1{font-size:1.6em}.missing{border:2px solid #c0392b;background:#fdf2f0;padding:.3em 1em;margin:1em 0}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc;padding-bottom:.2em}\
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}th,td{border:1px solid #d0d0d0;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fafafa}\
figure{margin:1.2em 0}figure svg{max-width:100%;height:auto;border:1px solid #e0e0e0}figcaption{color:#555;font-size:.9em}\
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}.muted{color:#777}";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A score as shown in every table: three decimals, "—" when absent.
pub fn score(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.3}"),
        Some(v) => v.to_string(),
        None => "—".to_string(),
    }
}

/// Seconds as "1h 02m 03s" / "2m 05s" / "4.2s".
pub fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        return format!("{seconds:.1}s");
    }
    let s = seconds.round() as u64;
    if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m {:02}s", s / 3600, (s / 60) % 60, s % 60)
    }
}

fn num(value: String) -> String {
    format!("<td class=\"num\">{value}</td>")
}

fn text(value: &str) -> String {
    format!("<td>{}</td>", escape(value))
}

/// The whole page; figures are `(figure, its SVG)`, drawn inline so the page stands alone (the PNG and
/// SVG files beside it are for slides and papers).
pub fn render_page(
    title: &str,
    table: &ResultsTable,
    figures: &[(&Figure, &str)],
    findings: &[Finding],
    protocol: &Protocol,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{t}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    let _ = writeln!(
        h,
        "<p class=\"muted\">{} evaluated models, {} executed nodes.</p>",
        table.rows.len(),
        table.nodes.len()
    );
    missing_banner(&mut h, &table.data);

    protocol_section(&mut h, protocol);
    findings_section(&mut h, table, findings, protocol);

    h.push_str("<h2>Figures</h2>\n");
    for (f, svg) in figures {
        let _ = writeln!(
            h,
            "<figure id=\"{s}\" aria-label=\"{a}\">{svg}<figcaption>{c} <a href=\"{s}.png\">PNG</a> <a href=\"{s}.svg\">SVG</a></figcaption></figure>",
            s = escape(&f.slug),
            a = escape(&f.title),
            c = escape(&f.caption)
        );
    }

    h.push_str("<h2>Results</h2>\n");
    results_table(&mut h, &table.rows);
    h.push_str("<h2>Per-task scores</h2>\n");
    task_tables(&mut h, table);
    h.push_str("<h2>Nodes: machine, versions, wall time</h2>\n");
    nodes_table(&mut h, table);
    h.push_str("<h2>Data provenance</h2>\n");
    provenance_table(&mut h, &table.data);
    h.push_str("<h2>Run configs</h2>\n");
    for r in &table.rows {
        let config = serde_json::to_string_pretty(&r.config).unwrap_or_else(|e| format!("unprintable config: {e}"));
        let _ =
            writeln!(h, "<details><summary>{}</summary><pre>{}</pre></details>", escape(&r.run_id), escape(&config));
    }
    h.push_str("</body>\n</html>\n");
    h
}

/// Where this study departs from the paper's protocol, and the verdicts' plan fixed in the config.
fn protocol_section(h: &mut String, protocol: &Protocol) {
    h.push_str("<h2>Protocol</h2>\n<p>Departures from the paper's protocol (read every result below with these in mind):</p>\n<ul>\n");
    for d in &protocol.departures {
        let _ = writeln!(h, "<li>{}</li>", escape(d));
    }
    h.push_str("</ul>\n");
    let tasks = if protocol.verdicts.vision_tasks.is_empty() {
        "every vision-language task".to_string()
    } else {
        protocol.verdicts.vision_tasks.join(", ")
    };
    let optimum = protocol.verdicts.image_token_optimum.map_or_else(
        || "none given (finding 2 not tested)".to_string(),
        |[lo, hi]| format!("{}-{} %", percent(lo), percent(hi)),
    );
    let _ = writeln!(
        h,
        "<p>Fixed before any result (<code>[verdicts]</code>): vision verdicts read {} on {}; predicted best image-token share {}.</p>",
        vision_measure(protocol.verdicts.vision_measure),
        escape(&tasks),
        escape(&optimum)
    );
}

/// What the vision verdicts read, as the report names it.
fn vision_measure(measure: VisionMeasure) -> &'static str {
    match measure {
        VisionMeasure::Gain => {
            "the vision gain (per item, credit minus the blind control's, so a task's answer prior cancels)"
        }
        VisionMeasure::Accuracy => "accuracy (the vision gain, credit minus the blind control's, beside it)",
    }
}

/// The findings table, with how its intervals and verdicts are made.
fn findings_section(h: &mut String, table: &ResultsTable, findings: &[Finding], protocol: &Protocol) {
    let _ = write!(
        h,
        "<h2>The paper's findings, checked</h2>\n<p class=\"muted\">Each finding has one primary contrast, fixed in advance, on the vision measure named above: {}. ",
        vision_measure(protocol.verdicts.vision_measure)
    );
    h.push_str("A contrast compares seed-matched runs where both arms have them; \
its 95 % interval is estimate &plusmn; t &middot; se, where se<sup>2</sup> = the paired item-bootstrap variance + &sigma;<sub>seed</sub><sup>2</sup>(1/n<sub>a</sub> + 1/n<sub>b</sub>) \
and t has Welch-Satterthwaite degrees of freedom (&sigma;<sub>seed</sub> pooled from replicate runs on the same items). \
A verdict is the primary test after Holm's adjustment across the findings (p raw / Holm shown); without measured seed noise it is \"cannot tell\". \
Other intervals in the table hold per comparison only. Text is a separate sub-verdict between vision-language models: multiple choice where the text-only model is above chance, \
else held-out bits-per-byte; \"holds\" is non-inferiority (agrees if the interval's lower end clears the margin, disagrees if its upper end is below it). \
Chance of an open answer is one over the number of distinct gold answers.</p>\n");
    if let Some(noise) = super::findings::seed_noise_summary(&table.rows, &protocol.verdicts) {
        let _ = writeln!(h, "<p>Seed noise behind every contrast: {}.</p>", escape(&noise));
    }
    h.push_str("<table class=\"findings\">\n<tr><th>paper's finding (primary contrast)</th><th>verdict</th><th>primary contrast, 95 % CI with seed noise</th><th>p raw / Holm</th><th>text side</th><th>other comparisons</th><th>evidence (mean stable scores)</th></tr>\n");
    for f in findings {
        let verdict = match &f.text {
            Some(t) => format!("{} (vision: {}; text: {})", f.verdict.label(), f.vision.label(), t.verdict.label()),
            None => f.verdict.label().to_string(),
        };
        let p = f.p.map_or_else(|| "—".to_string(), |(raw, adjusted)| format!("{raw:.4} / {adjusted:.4}"));
        let _ = writeln!(
            h,
            "<tr>{}{}{}{}{}{}{}</tr>",
            text(&f.question),
            text(&verdict),
            text(&f.primary),
            text(&p),
            text(f.text.as_ref().map_or("", |t| t.text.as_str())),
            text(&f.answer),
            text(&f.evidence)
        );
    }
    h.push_str("</table>\n");
}

/// At the top of the page: every task the config named that this run left out, and every source
/// the machine lacked, with why. Nothing missing, nothing said.
fn missing_banner(h: &mut String, data: &DataRecord) {
    if data.left_out.is_empty() && data.provenance.missing.is_empty() {
        return;
    }
    h.push_str("<div class=\"missing\"><p><strong>Missing from this run.</strong> These could not be had on the machine that prepared its data; no result below includes them.</p>\n<ul>\n");
    for t in &data.left_out {
        let _ = writeln!(
            h,
            "<li>eval task <code>{}</code> left out: source package <code>{}</code> could not be had ({})</li>",
            escape(&t.task),
            escape(&t.package),
            escape(&t.reason)
        );
    }
    for m in &data.provenance.missing {
        let _ = writeln!(
            h,
            "<li>source <code>{}</code> missing: prepared without {} ({})</li>",
            escape(&m.package),
            escape(&m.lost()),
            escape(&m.reason)
        );
    }
    h.push_str("</ul></div>\n");
}

/// Which registry candidate each data source came from (package, version, sha256 of the file).
fn provenance_table(h: &mut String, data: &DataRecord) {
    if data.provenance.sources.is_empty() {
        h.push_str("<p class=\"muted\">Not recorded: the data was prepared before vlmix kept provenance.</p>\n");
        return;
    }
    h.push_str("<table>\n<tr><th>source</th><th>registry</th><th>package and version</th><th>sha256 of the downloaded file</th><th>licence</th></tr>\n");
    for s in &data.provenance.sources {
        let _ = writeln!(
            h,
            "<tr>{}{}{}<td><code>{}</code></td>{}</tr>",
            text(&s.name),
            text(&s.registry),
            text(&s.package),
            escape(if s.sha256.is_empty() { "unknown" } else { &s.sha256 }),
            text(&s.licence)
        );
    }
    h.push_str("</table>\n");
}

fn results_table(h: &mut String, rows: &[ResultRow]) {
    h.push_str("<table class=\"results\">\n<tr><th>run</th><th>stage</th><th>images introduced</th><th>image tokens</th><th>instruction share</th><th>ft epochs</th><th>seed</th><th>vision stable</th><th>95 % CI</th><th>text stable</th><th>95 % CI</th><th>bits/byte</th><th>wall time</th></tr>\n");
    for r in rows {
        let _ = writeln!(
            h,
            "<tr>{}{}{}{}{}{}{}{}{}{}{}{}{}</tr>",
            text(&r.run_id),
            text(&r.stage),
            text(&r.introduction_label()),
            num(format!("{} %", super::results_table::percent(r.image_token_fraction))),
            num(format!("{} %", super::results_table::percent(r.instruction_share))),
            num(r.finetune_epochs.to_string()),
            num(r.seed.to_string()),
            num(score(r.vision_stable_score)),
            num(interval(r.vision_ci)),
            num(score(r.text_stable_score)),
            num(interval(r.text_ci)),
            num(score(r.bits_per_byte)),
            num(duration(r.wall_time_s)),
        );
    }
    h.push_str("</table>\n");
}

/// A 95 % interval as "[lo, hi]", "—" when absent.
pub fn interval(ci: Option<Interval>) -> String {
    ci.map_or_else(|| "—".to_string(), |c| format!("[{:.3}, {:.3}]", c.lo, c.hi))
}

/// Per-task tables with a column per task: accuracy, its interval, stable score, and the blind
/// control of the vision-language tasks.
fn task_tables(h: &mut String, table: &ResultsTable) {
    let tasks = table.task_names();
    if tasks.is_empty() {
        h.push_str("<p class=\"muted\">No task scores yet.</p>\n");
        return;
    }
    type Cell = fn(&TaskScore) -> Option<String>;
    let tables: [(&str, Cell); 4] = [
        ("accuracy (metric, chance and majority-class baseline in the header)", |s| Some(score(Some(s.accuracy)))),
        ("accuracy: 95 % bootstrap interval over items", |s| Some(interval(s.ci))),
        ("stable score = accuracy - chance", |s| Some(score(Some(s.stable_score)))),
        (
            "controls: accuracy with a blank (mid-grey) image (blind) and with no image at all (which carries no answer); vision gain = accuracy - blind accuracy [95 % paired interval], \"sees\" when the interval lies above 0; gain over the best control = accuracy - max(blind, no image, majority)",
            |s| {
                let (blind, gain, ci) = (s.blind_accuracy?, s.vision_gain?, s.gain_ci?);
                let sees = if ci.lo > 0.0 { " sees" } else { "" };
                let best = [s.majority, s.no_image_accuracy].into_iter().flatten().fold(blind, f64::max);
                let no_image = s.no_image_accuracy.map_or(String::new(), |a| format!(", no image {a:.3}"));
                Some(format!(
                    "blind {blind:.3}{no_image}, gain {gain:+.3} [{:+.3}, {:+.3}]{sees}; over the best control {:+.3}",
                    ci.lo,
                    ci.hi,
                    s.accuracy - best
                ))
            },
        ),
    ];
    for (caption, cell) in tables {
        let _ = writeln!(h, "<h3>{}</h3>\n<table class=\"tasks\">", escape(caption));
        h.push_str("<tr><th>run</th>");
        for (name, modality) in &tasks {
            let first = table.rows.iter().flat_map(|r| &r.tasks).find(|t| t.task == *name);
            let (chance, majority, metric) =
                (first.map(|t| t.chance), first.and_then(|t| t.majority), first.map_or("", |t| t.metric.as_str()));
            let recall = if name == vlmix_data::vl_eval::prepared::FLAG_COUNTRY { ", seen-concept recall" } else { "" };
            let _ = write!(
                h,
                "<th>{} <span class=\"muted\">({modality:?}{recall}, {}, chance {}, majority {})</span></th>",
                escape(name),
                escape(metric),
                score(chance),
                score(majority)
            );
        }
        h.push_str("</tr>\n");
        for r in &table.rows {
            let _ = write!(h, "<tr>{}", text(&r.run_id));
            for (name, _) in &tasks {
                h.push_str(&num(r
                    .tasks
                    .iter()
                    .find(|t| t.task == *name)
                    .and_then(cell)
                    .unwrap_or_else(|| "—".to_string())));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
}

fn nodes_table(h: &mut String, table: &ResultsTable) {
    if table.nodes.is_empty() {
        h.push_str("<p class=\"muted\">No node records.</p>\n");
        return;
    }
    let total: f64 = table.nodes.iter().map(|n| n.wall_time_s).sum();
    let _ = writeln!(h, "<p>Total wall time of all nodes: {}.</p>", duration(total));
    h.push_str("<table class=\"nodes\">\n<tr><th>node</th><th>stage</th><th>wall time</th><th>machine</th><th>versions</th></tr>\n");
    for n in &table.nodes {
        let versions: Vec<String> = n.versions.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            h,
            "<tr>{}{}{}{}{}</tr>",
            text(&n.node_id),
            text(&n.stage),
            num(duration(n.wall_time_s)),
            text(&n.machine),
            text(&versions.join(", "))
        );
    }
    h.push_str("</table>\n");
}
