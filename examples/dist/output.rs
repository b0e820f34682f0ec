//! Plain-text formatting shared by the commands.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Sets `--quiet`: progress and reports are not printed, errors still are.
pub(crate) fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub(crate) fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// The live progress bars being drawn, if any: a warning said meanwhile is
/// printed between their frames rather than through them.
static BARS: std::sync::Mutex<Option<indicatif::MultiProgress>> = std::sync::Mutex::new(None);

/// Sets (or, with `None`, clears) the bars being drawn.
pub(crate) fn drawing(bars: Option<indicatif::MultiProgress>) {
    *BARS.lock().unwrap_or_else(|p| p.into_inner()) = bars;
}

/// Prints `dist: warning: …` on stderr unless `--quiet` (which keeps to
/// errors and answers), between frames of the bars being drawn.
pub(crate) fn warn(text: std::fmt::Arguments<'_>) {
    if quiet() {
        return;
    }
    let line = format!("dist: warning: {text}");
    let bars = BARS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match bars {
        Some(bars) => bars.suspend(|| eprintln!("{line}")),
        None => eprintln!("{line}"),
    }
}

/// `println!` unless `--quiet`: for reports, not for a command's answer.
macro_rules! report {
    ($($arg:tt)*) => {
        if !$crate::output::quiet() {
            $crate::output::outln!($($arg)*);
        }
    };
}
pub(crate) use report;

/// `println!` that ends the process as a C or Go program's ends when stdout
/// is a closed pipe (`dist list | head -1`): silently, by SIGPIPE.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// `print!` as [`outln!`] does it.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Writes to stdout; see [`outln!`].
pub(crate) fn write_stdout(text: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        stdout_failed(e);
    }
}

/// A write to stdout failed: a closed pipe ends the process as SIGPIPE
/// would (Rust ignores the signal, so the write fails instead); anything
/// else (a full disk) is reported.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        die_by(libc::SIGPIPE);
    }
    eprintln!("dist: write to stdout: {e}");
    std::process::exit(1)
}

/// Ends the process by `signal`, its default action restored first (the
/// runtime's handler, or Rust's ignoring SIGPIPE, out of the way), so the
/// parent sees what happened: a shell running dist in a loop stops at a
/// Ctrl-C too, where a plain exit, even with status 130, would tell it the
/// signal was dealt with. Returns only if the signal does not end processes.
pub(crate) fn die_by(signal: libc::c_int) {
    // SAFETY: restoring a signal's default action and raising it have no
    // preconditions.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::raise(signal);
    }
}

/// Async stdout for streamed answers (`get`, `fetch-object`): a closed
/// pipe ends the process as [`outln!`] does.
pub(crate) struct Stdout(tokio::io::Stdout);

/// See [`Stdout`].
pub(crate) fn stdout() -> Stdout {
    Stdout(tokio::io::stdout())
}

fn checked<T>(result: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
    match result {
        Poll::Ready(Err(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => stdout_failed(e),
        other => other,
    }
}

impl tokio::io::AsyncWrite for Stdout {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        checked(Pin::new(&mut self.0).poll_write(cx, buf))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        checked(Pin::new(&mut self.0).poll_flush(cx))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        checked(Pin::new(&mut self.0).poll_shutdown(cx))
    }
}

/// `12.1 MiB`-style sizes.
pub(crate) fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `3 minutes`-style ages, from `then` to now.
pub(crate) fn age(then: SystemTime) -> String {
    span(
        SystemTime::now()
            .duration_since(then)
            .unwrap_or(Duration::ZERO),
    )
}

/// `3 minutes`-style durations, in their largest whole unit.
pub(crate) fn span(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (n, unit) = match secs {
        0..60 => (secs, "second"),
        60..3600 => (secs / 60, "minute"),
        3600..86400 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`): what a
/// registry or a layout wrote (a platform's `os`, a label) is printed as
/// text, one line, never as a sequence that drives the terminal.
pub(crate) fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// Left-aligned columns separated by two spaces, like `tabwriter`; cells
/// are made [`printable`].
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| printable(cell)).collect())
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < cells.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// Awaits `work`, first saying `waiting()` on stderr if it takes over a
/// second: a wait behind another process (a stopped prune) is then no
/// silent hang.
pub(crate) async fn saying_if_slow<T>(
    work: impl std::future::Future<Output = T>,
    waiting: impl FnOnce() -> String,
) -> T {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => done,
        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
            eprintln!("dist: {}", waiting());
            work.await
        }
    }
}
