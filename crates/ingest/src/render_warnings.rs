//! The SVG renderer (usvg, tiny-skia, resvg) logs a warning for every element it cannot draw:
//! ~230 lines per full preparation, almost all "Failed to parse marker-end value" from a few
//! clip-art files. [`CountingLayer`] counts them instead, and prepare prints one line per source
//! with the first example; `VLMIX_LOG=debug` still prints each one (see [`log_filter`]).
use std::fmt::Write as _;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::Context;

/// Log targets of the renderer crates.
const RENDERER_TARGETS: [&str; 3] = ["usvg", "tiny_skia", "resvg"];

/// Renderer warnings since the last [`take`]: how many, and the first one's text.
static SEEN: Mutex<(usize, Option<String>)> = Mutex::new((0, None));

/// The console filter: `VLMIX_LOG` (default `warn`), with the renderer's warnings left to the
/// counter unless the user asked for debug output or named a renderer target.
pub fn log_filter(user: Option<&str>) -> String {
    let user = user.filter(|u| !u.trim().is_empty()).unwrap_or("warn");
    let verbose = user.contains("debug") || user.contains("trace");
    if verbose || RENDERER_TARGETS.iter().any(|t| user.contains(t)) {
        return user.to_string();
    }
    let mut filter = user.to_string();
    for target in RENDERER_TARGETS {
        let _ = write!(filter, ",{target}=off");
    }
    filter
}

/// Counts warnings of the renderer crates (through the `log` bridge) for [`take`]; install it
/// with a `LevelFilter::WARN` per-layer filter.
pub struct CountingLayer;

impl<S: Subscriber> tracing_subscriber::Layer<S> for CountingLayer {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let normalized = event.normalized_metadata();
        let metadata = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *metadata.level() > Level::WARN || !RENDERER_TARGETS.iter().any(|t| metadata.target().starts_with(t)) {
            return;
        }
        let mut seen = SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        seen.0 += 1;
        if seen.1.is_none() {
            let mut message = Message(String::new());
            event.record(&mut message);
            seen.1 = Some(format!("{}: {}", metadata.target(), message.0));
        }
    }
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// The renderer warnings counted since the last call, and the first one's text; resets the count.
pub fn take() -> (usize, Option<String>) {
    std::mem::take(&mut *SEEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renderer_targets_are_silenced_unless_asked_for() {
        assert_eq!(log_filter(None), "warn,usvg=off,tiny_skia=off,resvg=off");
        assert_eq!(log_filter(Some("info")), "info,usvg=off,tiny_skia=off,resvg=off");
        assert_eq!(log_filter(Some("debug")), "debug");
        assert_eq!(log_filter(Some("warn,usvg=warn")), "warn,usvg=warn");
    }
}
