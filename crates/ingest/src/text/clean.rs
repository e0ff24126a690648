//! Markup removal: reStructuredText (kernel and Python docs), GCIDE's dictd entries, and whitespace.
//!
//! The goal is prose a language model should learn from, not a faithful renderer: directive lines,
//! section underlines, comments and link targets go; role and link syntax is reduced to its visible
//! text; code blocks stay (they are part of the documents' content).

/// Collapses runs of blanks inside lines, trims line ends, drops control characters and keeps at most
/// one empty line between paragraphs.
pub fn normalize_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut blank_run = 0usize;
    for raw in text.lines() {
        let line: String = raw.chars().map(|c| if c == '\t' { ' ' } else { c }).filter(|c| !c.is_control()).collect();
        let line = line.trim_end();
        if line.trim().is_empty() {
            blank_run += 1;
            continue;
        }
        if !out.is_empty() {
            out.push_str(if blank_run > 0 { "\n\n" } else { "\n" });
        }
        blank_run = 0;
        let indent = line.len() - line.trim_start().len();
        out.push_str(&line[..indent]);
        let mut previous_space = false;
        for c in line[indent..].chars() {
            let space = c == ' ' || c == '\u{a0}';
            if !(space && previous_space) {
                out.push(if space { ' ' } else { c });
            }
            previous_space = space;
        }
    }
    out
}

/// Directives whose whole indented block is navigation or build machinery, not prose.
const DROPPED_BLOCK_DIRECTIVES: &[&str] = &[
    "toctree",
    "contents",
    "only",
    "index",
    "include",
    "literalinclude",
    "image",
    "figure",
    "kernel-doc",
    "kernel-feat",
    "kernel-abi",
    "kernel-include",
    "tabularcolumns",
    "highlight",
    "raw",
    "cssclass",
    "sectionauthor",
    "moduleauthor",
    "module",
    "currentmodule",
    "testsetup",
    "testcleanup",
    "csv-table",
    "flat-table",
    "maxdepth",
    "ifconfig",
    "audit-event",
    "impl-detail",
    "c:namespace",
    "py:module",
    "program",
    "cmdoption",
    "availability",
    "productionlist",
    "opcode",
    "pdbcommand",
    "rst-class",
    "default-domain",
    "role",
    "glossary",
];

/// Sphinx's version notes, rendered as the words Sphinx prints for them.
const VERSION_DIRECTIVES: &[(&str, &str)] = &[
    ("versionadded", "New in version"),
    ("versionchanged", "Changed in version"),
    ("deprecated", "Deprecated since version"),
    ("deprecated-removed", "Deprecated since version"),
];

/// Strips reStructuredText markup to readable text.
pub fn strip_rst(source: &str) -> String {
    let lines: Vec<&str> = source.lines().collect();
    let mut kept: Vec<String> = Vec::with_capacity(lines.len());
    let mut skip_block_deeper_than: Option<usize> = None;
    let mut options_of_directive_at: Option<usize> = None;
    for line in &lines {
        let indent = line.len() - line.trim_start().len();
        let body = line.trim();
        if let Some(depth) = skip_block_deeper_than {
            if body.is_empty() || indent > depth {
                continue;
            }
            skip_block_deeper_than = None;
        }
        if let Some(depth) = options_of_directive_at.take() {
            if indent > depth && is_option_line(body) {
                options_of_directive_at = Some(depth);
                continue;
            }
        }
        if body.is_empty() {
            kept.push(String::new());
            continue;
        }
        if is_section_rule(body) {
            continue;
        }
        if let Some(rest) = body.strip_prefix("..") {
            let rest = rest.trim();
            match rest.split_once("::") {
                Some((name, argument)) if !name.contains(' ') || name.contains(':') => {
                    let name = name.trim();
                    if DROPPED_BLOCK_DIRECTIVES.contains(&name) || name.starts_with("|") {
                        skip_block_deeper_than = Some(indent);
                    } else {
                        // Keep the directive's argument (a signature, a note's first words) and its body.
                        let argument = strip_inline(argument.trim());
                        let line = match VERSION_DIRECTIVES.iter().find(|(d, _)| *d == name) {
                            Some((_, phrase)) => format!("{phrase} {argument}."),
                            None => argument,
                        };
                        if !line.is_empty() {
                            kept.push(format!("{}{line}", " ".repeat(indent)));
                        }
                        options_of_directive_at = Some(indent);
                    }
                }
                // A comment (`.. text`), a link target (`.. _label:`) or a footnote: drop it and its block.
                _ => skip_block_deeper_than = Some(indent),
            }
            continue;
        }
        if body == "::" {
            continue;
        }
        let mut text = strip_inline(&line[indent..]);
        if let Some(prefix) = text.strip_suffix("::") {
            text = format!("{}:", prefix.trim_end());
        }
        kept.push(format!("{}{}", " ".repeat(indent), text));
    }
    normalize_whitespace(&kept.join("\n"))
}

/// A directive option such as `:maxdepth: 2` (directly under its directive, so not prose).
fn is_option_line(body: &str) -> bool {
    let Some(inner) = body.strip_prefix(':') else {
        return false;
    };
    inner
        .find(':')
        .is_some_and(|end| end > 0 && inner[..end].chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
}

/// A heading's over/underline or a table border: one punctuation character repeated, possibly in
/// columns separated by blanks or `+` (simple and grid tables).
fn is_section_rule(body: &str) -> bool {
    let first = body.chars().next().unwrap_or(' ');
    let first = if first == '+' { body.chars().find(|&c| c != '+').unwrap_or('+') } else { first };
    "=-~^*#\"'`.:_<>".contains(first)
        && body.chars().filter(|&c| c == first).count() >= 3
        && body.chars().all(|c| c == first || c == ' ' || c == '\t' || c == '+')
}

/// Reduces inline markup: ``code`` -> code, :role:`text <target>` -> text, `text <url>`_ -> text,
/// **strong** -> strong, `~a.b` -> a.b, trailing `_` of references removed.
pub fn strip_inline(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("``") {
            if let Some(end) = after.find("``") {
                out.push_str(&after[..end]);
                rest = &after[end + 2..];
                continue;
            }
        }
        if rest.starts_with(':') {
            if let Some(role_len) = role_prefix_len(rest) {
                rest = &rest[role_len..];
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix('`') {
            if let Some(end) = after.find('`') {
                out.push_str(&interpreted_text(&after[..end]));
                rest = after[end + 1..].trim_start_matches('_');
                continue;
            }
        }
        if let Some(after) = rest.strip_prefix("**") {
            if let Some(end) = after.find("**") {
                out.push_str(&after[..end]);
                rest = &after[end + 2..];
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Length of a `:role:` (or `:domain:role:`) prefix directly followed by a backquote.
fn role_prefix_len(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 1;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b":-_+.".contains(&bytes[i])) {
        i += 1;
    }
    (i > 1 && i < bytes.len() && bytes[i] == b'`' && bytes[i - 1] == b':').then_some(i)
}

/// The visible part of interpreted text: `text <target>` -> text, `~mod.func` -> mod.func.
fn interpreted_text(inner: &str) -> String {
    let visible = match (inner.rfind('<'), inner.ends_with('>')) {
        (Some(open), true) if open > 0 => inner[..open].trim_end(),
        (Some(0), true) => &inner[1..inner.len() - 1],
        _ => inner,
    };
    visible.trim_start_matches(['~', '!']).to_string()
}

/// GCIDE entry text (dictd format, 1913 Webster) to prose: the pronunciation `\Ab*do"men\` goes, source
/// tags such as `[1913 Webster]` or `[PJC]` go, `{braces}` around cross-references go, wrapped lines of a
/// paragraph are joined.
pub fn clean_gcide_entry(entry: &str) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in entry.lines() {
        let body = strip_source_tags(line.trim());
        if body.is_empty() {
            if !current.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(&body);
    }
    if !current.is_empty() {
        paragraphs.push(current);
    }
    // Tags can wrap across lines (`[1913` / `Webster]`), so strip again once lines are joined.
    let joined = strip_source_tags(&paragraphs.join("\n"));
    let mut out = String::with_capacity(joined.len());
    let mut in_pronunciation = false;
    for c in joined.chars() {
        match c {
            '\\' => in_pronunciation = !in_pronunciation,
            '{' | '}' if !in_pronunciation => {}
            _ if in_pronunciation => {}
            _ => out.push(c),
        }
    }
    let out = drop_parenthesised_pronunciation(&out);
    normalize_whitespace(&expand_letter_entities(&out).replace(" ,", ",")).trim().to_string()
}

/// Removes GCIDE's bracketed source tags (`[1913 Webster]`, `[Webster 1913 Suppl.]`, `[WordNet 1.5]`,
/// `[PJC]`), which mark provenance rather than meaning, wherever they stand in the line.
fn strip_source_tags(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    while let Some(open) = rest.find('[') {
        let tag_end = rest[open..].find(']').map(|e| open + e + 1);
        let is_source = tag_end.is_some_and(|end| {
            let tag = &rest[open..end];
            tag.len() < 40 && ["Webster", "WordNet", "PJC", "Century Dict"].iter().any(|m| tag.contains(m))
        });
        match tag_end {
            Some(end) if is_source => {
                out.push_str(rest[..open].trim_end());
                rest = &rest[end..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = &rest[open + 1..];
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

/// GCIDE writes accented letters as ASCII entities in brackets (`[ae]`, `[aum]`, `[e^]`, `[=o]`, `[*u]`):
/// ligatures and umlauts become their letters, other diacritic marks are dropped.
fn expand_letter_entities(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let entity = after.find(']').filter(|&e| e <= 4).map(|e| &after[..e]);
        match entity.and_then(letter_entity) {
            Some(letter) => {
                out.push_str(&letter);
                rest = &after[entity.map_or(0, str::len) + 1..];
            }
            None => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn letter_entity(entity: &str) -> Option<String> {
    const LIGATURES: &[(&str, &str)] = &[("ae", "æ"), ("AE", "Æ"), ("oe", "œ"), ("OE", "Œ")];
    if let Some((_, l)) = LIGATURES.iter().find(|(e, _)| *e == entity) {
        return Some(l.to_string());
    }
    if let Some(base) = entity.strip_suffix("um") {
        let umlaut = match base {
            "a" => "ä",
            "e" => "ë",
            "i" => "ï",
            "o" => "ö",
            "u" => "ü",
            "A" => "Ä",
            "O" => "Ö",
            "U" => "Ü",
            _ => return None,
        };
        return Some(umlaut.to_string());
    }
    let letters: String = entity.chars().filter(char::is_ascii_alphabetic).collect();
    let marks = entity.chars().filter(|c| !c.is_ascii_alphabetic()).count();
    (letters.chars().count() == 1
        && marks >= 1
        && entity.chars().all(|c| c.is_ascii_alphabetic() || "^=*.`'~\"_:,".contains(c)))
    .then_some(letters)
}

/// Drops the pronunciation in parentheses right after the headword (`Apple ([a^]p"p'l), n.`).
fn drop_parenthesised_pronunciation(entry: &str) -> String {
    let (first_line, rest) = entry.split_once('\n').map_or((entry, None), |(a, b)| (a, Some(b)));
    let first_line = drop_pronunciation_in_line(first_line);
    match rest {
        Some(rest) => format!("{first_line}\n{rest}"),
        None => first_line,
    }
}

fn drop_pronunciation_in_line(first_line: &str) -> String {
    if let Some(open) = first_line.find(" (") {
        if let Some(close) = first_line[open..].find(')').map(|c| open + c) {
            let inside = &first_line[open + 2..close];
            let looks_phonetic =
                inside.contains('"') || inside.contains('[') || inside.contains('*') || inside.contains('`');
            let headword = first_line[..open].trim_end();
            if looks_phonetic && !headword.contains(' ') {
                return format!("{headword}{}", &first_line[close + 1..]);
            }
        }
    }
    first_line.to_string()
}

/// Decodes text that is UTF-8 except for stray Windows-1252 bytes (as in GCIDE), mapping each invalid
/// byte through Windows-1252 instead of replacing it; returns whether any byte needed that.
pub fn decode_utf8_or_cp1252(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_string(), false),
        Err(_) => {
            let mut out = String::with_capacity(bytes.len());
            let mut rest = bytes;
            while !rest.is_empty() {
                match std::str::from_utf8(rest) {
                    Ok(s) => {
                        out.push_str(s);
                        break;
                    }
                    Err(e) => {
                        let valid = e.valid_up_to();
                        out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                        out.push(cp1252(rest[valid]));
                        rest = &rest[valid + 1..];
                    }
                }
            }
            (out, true)
        }
    }
}

fn cp1252(byte: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘',
        '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
    ];
    match byte {
        0x80..=0x9f => HIGH[(byte - 0x80) as usize],
        _ => byte as char,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rst_headings_directives_and_roles_are_removed() {
        let rst = ".. SPDX-License-Identifier: GPL-2.0\n\n.. _readme:\n\nLinux kernel release 6.x <http://kernel.org/>\n=============================================\n\n=====   =====\nfield   value\n=====\t=====\n+---+---+\n\nPlease read the\n:ref:`Documentation/process/changes.rst <changes>` file and ``make menuconfig``.\n\n.. toctree::\n   :maxdepth: 2\n\n   intro\n   setup\n\n.. note:: Keep **this** text.\n\n.. versionadded:: 3.2\n\nExample::\n\n    $ make\n";
        let text = strip_rst(rst);
        assert!(
            !text.contains("SPDX") && !text.contains("_readme") && !text.contains("===") && !text.contains("+---"),
            "{text}"
        );
        assert!(text.contains("field value"), "{text}");
        assert!(!text.contains("toctree") && !text.contains("maxdepth") && !text.contains("intro"), "{text}");
        assert!(text.contains("Documentation/process/changes.rst file and make menuconfig."), "{text}");
        assert!(text.contains("Keep this text.") && text.contains("New in version 3.2."), "{text}");
        assert!(text.contains("Example:\n\n    $ make"), "{text}");
    }

    #[test]
    fn python_roles_keep_their_visible_text() {
        assert_eq!(strip_inline(":func:`~os.path.join` and :class:`list`"), "os.path.join and list");
        assert_eq!(strip_inline("see `the tutorial <https://x>`_."), "see the tutorial.");
    }

    #[test]
    fn gcide_entry_loses_pronunciation_tags_and_braces() {
        let entry = "Abdominal \\Ab*dom\"i*nal\\, a. [Cf. F. abdominal.]\n   1. Of or pertaining to the abdomen; ventral; as, the\n      abdominal regions.\n      [1913 Webster]\n\n   {Abdominal ring} (Anat.), an opening.\n      [1913 Webster]\n";
        assert_eq!(
            clean_gcide_entry(entry),
            "Abdominal, a. [Cf. F. abdominal.] 1. Of or pertaining to the abdomen; ventral; as, the abdominal regions.\nAbdominal ring (Anat.), an opening."
        );
    }

    #[test]
    fn gcide_phonetic_headword_and_letter_entities() {
        let entry = "Apple \\Ap\"ple\\ ([a^]p\"p'l), n. [OE. appel, AS. [ae]ppel; Sw. [aum]ple, Lith. ob[*u]lys.] [1913 Webster] applejack\n   stymie. [1913\n   Webster]\n";
        assert_eq!(
            clean_gcide_entry(entry),
            "Apple, n. [OE. appel, AS. æppel; Sw. äple, Lith. obulys.] applejack stymie."
        );
    }

    #[test]
    fn stray_cp1252_bytes_become_their_characters() {
        let (text, repaired) = decode_utf8_or_cp1252(b"it\x92s caf\xc3\xa9");
        assert_eq!(text, "it\u{2019}s caf\u{e9}");
        assert!(repaired);
    }

    #[test]
    fn whitespace_is_collapsed_but_paragraphs_and_indent_stay() {
        assert_eq!(normalize_whitespace("a  b\t c\n\n\n\n  d\u{7}  e  \n"), "a b c\n\n  d e");
    }
}
