//! Progress of fetches, pulls and pushes, drawn from the events and ingest
//! statuses the library supplies: live bars on a terminal (indicatif), plain lines
//! otherwise (one per state change, never an escape code), nothing when quiet.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use ocidist::content::local::LocalStore;
use ocidist::content::{Descriptor, IngestManager};
use ocidist::pull::PullEvent;
use ocidist::remotes::{FetchEvent, PushEvent, ingest_ref};
use ocidist::snapshot::UnpackEvent;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::task::JoinHandle;

use crate::output;

/// How often live bars read the store's ingest statuses.
const TICK: Duration = Duration::from_millis(100);
/// Width of the `|+++---|` bar in plain lines.
const BAR_WIDTH: u64 = 10;

/// What the display shows: a pull's (or fetch's, or unpack's) events, or a
/// push's.
#[derive(Debug)]
enum Shown {
    Pull(PullEvent),
    Push(PushEvent),
}

/// A running progress display; feed it through [`Progress::events`],
/// [`Progress::fetch_events`], [`Progress::unpack_events`] or
/// [`Progress::push_events`], then [`Progress::finish`] it.
pub(crate) struct Progress {
    events: UnboundedSender<Shown>,
    task: JoinHandle<u64>,
    started: Instant,
}

impl Progress {
    /// Starts the display: live if stdout is a terminal, plain lines if not,
    /// silent under `--quiet`. `store` supplies the byte counts of live bars
    /// (none: an unpack, with no downloads).
    pub(crate) fn start(store: Option<&LocalStore>) -> Self {
        let (events, rx) = unbounded_channel();
        let display = if output::quiet() {
            Display::Quiet
        } else if std::io::stdout().is_terminal() {
            Display::Live(Live::new())
        } else {
            Display::Plain
        };
        let task = tokio::spawn(display.run(rx, store.cloned()));
        Progress {
            events,
            task,
            started: Instant::now(),
        }
    }

    /// The sender a pull reports to.
    pub(crate) fn events(&self) -> UnboundedSender<PullEvent> {
        self.forwarder(Shown::Pull)
    }

    /// A sender for an unpack's events.
    pub(crate) fn unpack_events(&self) -> UnboundedSender<UnpackEvent> {
        self.forwarder(|e| Shown::Pull(PullEvent::Unpack(e)))
    }

    /// A sender for a plain fetch's events.
    pub(crate) fn fetch_events(&self) -> UnboundedSender<FetchEvent> {
        self.forwarder(|e| Shown::Pull(PullEvent::Fetch(e)))
    }

    /// A sender for a push's events.
    pub(crate) fn push_events(&self) -> UnboundedSender<PushEvent> {
        self.forwarder(Shown::Push)
    }

    /// A sender whose events reach the display wrapped by `wrap`.
    fn forwarder<E: Send + 'static>(&self, wrap: fn(E) -> Shown) -> UnboundedSender<E> {
        let (tx, mut rx) = unbounded_channel();
        let events = self.events.clone();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let _ = events.send(wrap(event));
            }
        });
        tx
    }

    /// Waits for the display to draw the last event (every sender must be
    /// gone), then, if the work `succeeded`, prints the footer: `elapsed:
    /// 1.6 s total: 51.2 MiB (32.0 MiB/s)`, the bytes downloaded or uploaded
    /// (a failure is said on stderr only).
    pub(crate) async fn finish(self, succeeded: bool) {
        drop(self.events);
        let total = self.task.await.unwrap_or(0);
        if output::quiet() || !succeeded {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64();
        crate::output::outln!(
            "elapsed: {elapsed:.1} s total: {} ({}/s)",
            output::size(total),
            output::size((total as f64 / elapsed.max(1e-9)) as u64)
        );
    }
}

/// The bytes a run moved: downloaded (of a resumed blob, only what it
/// lacked) or uploaded.
#[derive(Default)]
struct Transferred {
    total: u64,
    resumed_at: std::collections::HashMap<ocidist::content::Digest, u64>,
}

impl Transferred {
    fn note(&mut self, event: &Shown) {
        match event {
            Shown::Pull(PullEvent::Fetch(FetchEvent::Started { desc, offset })) if *offset > 0 => {
                self.resumed_at.insert(desc.digest().clone(), *offset);
            }
            Shown::Pull(PullEvent::Fetch(FetchEvent::Done(desc))) => {
                let held = self.resumed_at.remove(desc.digest()).unwrap_or(0);
                self.total += desc.size().saturating_sub(held);
            }
            Shown::Push(PushEvent::Done(desc)) => self.total += desc.size(),
            _ => {}
        }
    }
}

enum Display {
    Quiet,
    Plain,
    Live(Live),
}

impl Display {
    /// Draws events until every sender is dropped; returns the bytes moved.
    async fn run(mut self, mut rx: UnboundedReceiver<Shown>, store: Option<LocalStore>) -> u64 {
        let mut transferred = Transferred::default();
        let mut tick = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                event = rx.recv() => {
                    let Some(event) = event else { break };
                    transferred.note(&event);
                    // What a layer's apply skipped, said once per layer.
                    if let Shown::Pull(PullEvent::Unpack(UnpackEvent::Unpacked { layer, warnings, .. })) = &event {
                        for warning in warnings {
                            crate::output::warn(format_args!("{}: {warning}", layer_ref(layer)));
                        }
                    }
                    match &mut self {
                        Display::Quiet => {}
                        Display::Plain => {
                            if let Some(line) = plain_line(&event) {
                                crate::output::outln!("{line}");
                            }
                        }
                        Display::Live(live) => live.event(&event),
                    }
                }
                _ = tick.tick(), if matches!(self, Display::Live(_)) && store.is_some() => {
                    let Some(store) = &store else { continue };
                    if let (Display::Live(live), Ok(statuses)) =
                        (&mut self, store.list_statuses(&[]).await)
                    {
                        for status in statuses {
                            if let Some(bar) = live.bars.get(&status.reference) {
                                bar.set_position(status.offset);
                            }
                        }
                    }
                }
            }
        }
        if let Display::Live(live) = self {
            for bar in live.bars.values() {
                bar.abandon();
            }
            crate::output::drawing(None);
        }
        transferred.total
    }
}

/// `|+++-------| 12.1 MiB/50.2 MiB`
fn bar_text(done: u64, size: u64) -> String {
    let filled = (done.min(size) * BAR_WIDTH)
        .checked_div(size)
        .unwrap_or(BAR_WIDTH);
    format!(
        "|{}{}| {}/{}",
        "+".repeat(filled as usize),
        "-".repeat((BAR_WIDTH - filled) as usize),
        output::size(done),
        output::size(size)
    )
}

fn layer_ref(desc: &Descriptor) -> String {
    format!("layer-{}", desc.digest())
}

/// One plain line per state change; the refs are whole, so they can be grepped.
fn plain_line(event: &Shown) -> Option<String> {
    let event = match event {
        Shown::Pull(event) => event,
        Shown::Push(event) => return plain_push_line(event),
    };
    Some(match event {
        PullEvent::Resolved(desc) => format!("{}: resolved", ingest_ref(desc)),
        PullEvent::Fetch(FetchEvent::Started { desc, offset }) if *offset > 0 => format!(
            "{}: resuming at {} {}",
            ingest_ref(desc),
            output::size(*offset),
            bar_text(*offset, desc.size())
        ),
        PullEvent::Fetch(FetchEvent::Started { desc, .. }) => format!(
            "{}: downloading {}",
            ingest_ref(desc),
            bar_text(0, desc.size())
        ),
        PullEvent::Fetch(FetchEvent::Done(desc)) => format!(
            "{}: done {}",
            ingest_ref(desc),
            bar_text(desc.size(), desc.size())
        ),
        PullEvent::Fetch(FetchEvent::Exists(desc)) => format!("{}: exists", ingest_ref(desc)),
        PullEvent::Fetch(FetchEvent::Waiting(desc)) => {
            format!("{}: waiting for another writer", ingest_ref(desc))
        }
        PullEvent::Unpack(UnpackEvent::Unpacking { layer }) => {
            format!("{}: unpacking", layer_ref(layer))
        }
        PullEvent::Unpack(UnpackEvent::Unpacked { layer, seconds, .. }) => {
            format!("{}: unpacked in {seconds:.2} s", layer_ref(layer))
        }
        PullEvent::Unpack(UnpackEvent::Exists { layer, .. }) => {
            format!("{}: already unpacked", layer_ref(layer))
        }
        _ => return None,
    })
}

/// [`plain_line`] for a push: uploads started and done, what the registry
/// had; no line for the bytes on the way.
fn plain_push_line(event: &PushEvent) -> Option<String> {
    Some(match event {
        PushEvent::Started(desc) => format!(
            "{}: uploading {}",
            ingest_ref(desc),
            bar_text(0, desc.size())
        ),
        PushEvent::Done(desc) => format!(
            "{}: pushed {}",
            ingest_ref(desc),
            bar_text(desc.size(), desc.size())
        ),
        PushEvent::Exists(desc) => format!("{}: exists", ingest_ref(desc)),
        _ => return None,
    })
}

/// Live bars, one per blob, keyed by ingest ref; a layer's unpack states
/// show on its download bar.
struct Live {
    multi: MultiProgress,
    bars: HashMap<String, ProgressBar>,
    style: ProgressStyle,
}

impl Live {
    fn new() -> Self {
        let style = ProgressStyle::with_template(
            "{prefix}: {msg:11} |{bar:10}| {binary_bytes}/{binary_total_bytes}",
        )
        .expect("a valid template")
        .progress_chars("+-");
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout());
        crate::output::drawing(Some(multi.clone()));
        Live {
            multi,
            bars: HashMap::new(),
            style,
        }
    }

    /// The bar of `reference`, made on first use, sized `size`.
    fn bar(&mut self, reference: String, size: u64) -> &ProgressBar {
        let (multi, style) = (&self.multi, &self.style);
        self.bars.entry(reference).or_insert_with_key(|reference| {
            let bar = multi.add(ProgressBar::new(size).with_style(style.clone()));
            bar.set_prefix(short_ref(reference));
            bar
        })
    }

    fn event(&mut self, event: &Shown) {
        let event = match event {
            Shown::Pull(event) => event,
            Shown::Push(event) => return self.push_event(event),
        };
        let (desc, reference, state, position) = match event {
            PullEvent::Resolved(desc) => (desc, ingest_ref(desc), "resolved", Some(0)),
            PullEvent::Fetch(FetchEvent::Started { desc, offset }) => {
                (desc, ingest_ref(desc), "downloading", Some(*offset))
            }
            PullEvent::Fetch(FetchEvent::Done(desc)) => {
                (desc, ingest_ref(desc), "done", Some(desc.size()))
            }
            PullEvent::Fetch(FetchEvent::Exists(desc)) => {
                (desc, ingest_ref(desc), "exists", Some(desc.size()))
            }
            // The other writer's bytes show through the ingest statuses.
            PullEvent::Fetch(FetchEvent::Waiting(desc)) => {
                (desc, ingest_ref(desc), "waiting", None)
            }
            PullEvent::Unpack(UnpackEvent::Unpacking { layer }) => {
                (layer, layer_ref(layer), "unpacking", None)
            }
            PullEvent::Unpack(UnpackEvent::Unpacked { layer, .. }) => {
                (layer, layer_ref(layer), "unpacked", Some(layer.size()))
            }
            PullEvent::Unpack(UnpackEvent::Exists { layer, .. }) => {
                (layer, layer_ref(layer), "unpacked", Some(layer.size()))
            }
            _ => return,
        };
        self.show(desc, reference, state, position);
    }

    fn push_event(&mut self, event: &PushEvent) {
        let (desc, state, position) = match event {
            PushEvent::Started(desc) => (desc, "uploading", 0),
            PushEvent::Progress { desc, sent } => (desc, "uploading", *sent),
            PushEvent::Done(desc) => (desc, "pushed", desc.size()),
            PushEvent::Exists(desc) => (desc, "exists", desc.size()),
            _ => return,
        };
        self.show(desc, ingest_ref(desc), state, Some(position));
    }

    /// Sets the bar of `reference` (sized by `desc`) to `state` at `position`.
    fn show(&mut self, desc: &Descriptor, reference: String, state: &str, position: Option<u64>) {
        let bar = self.bar(reference, desc.size());
        bar.set_message(state.to_string());
        if let Some(position) = position {
            bar.set_position(position);
        }
    }
}

/// `layer-sha256:0123456789ab…`: enough of the digest to tell blobs apart
/// and keep a line within 80 columns.
fn short_ref(reference: &str) -> String {
    match reference.split_once(':') {
        Some((head, hex)) if hex.len() > 12 => format!("{head}:{}…", &hex[..12]),
        _ => reference.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_tenths() {
        assert_eq!(bar_text(0, 100), "|----------| 0 B/100 B");
        assert_eq!(bar_text(55, 100), "|+++++-----| 55 B/100 B");
        assert_eq!(bar_text(100, 100), "|++++++++++| 100 B/100 B");
        assert_eq!(bar_text(0, 0), "|++++++++++| 0 B/0 B");
    }

    #[test]
    fn a_resumed_blob_counts_only_what_it_lacked() {
        let blob =
            |n: u8, size| ocidist::content::descriptor(ocidist::content::sha256_of(&[n]), size);
        let mut downloaded = Transferred::default();
        for event in [
            FetchEvent::Started {
                desc: blob(1, 1000),
                offset: 600,
            },
            FetchEvent::Started {
                desc: blob(2, 50),
                offset: 0,
            },
            FetchEvent::Done(blob(2, 50)),
            FetchEvent::Done(blob(1, 1000)),
        ] {
            downloaded.note(&Shown::Pull(PullEvent::Fetch(event)));
        }
        assert_eq!(downloaded.total, 400 + 50);
    }

    #[test]
    fn short_refs_keep_twelve_hex_digits() {
        assert_eq!(
            short_ref("layer-sha256:0123456789abcdef0123"),
            "layer-sha256:0123456789ab…"
        );
        assert_eq!(short_ref("weird"), "weird");
    }
}
