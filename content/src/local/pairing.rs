//! Chunks of two ingests hashed together.
//!
//! [`Digester::update_pair`] hashes two SHA-256 streams at about 1.75 times
//! the speed of one after the other, but a stream has only its own chunks. So
//! the threads that append chunks of concurrent ingests meet here: the first
//! to come leaves its chunk and waits a little; the next one hashes both,
//! hands the first its chunk back, and goes on to write its own.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use super::direct::ChunkBuf;
use crate::Digester;

/// How long a chunk waits for a partner before it is hashed alone. While
/// eight streams download at once, a 1 MiB chunk is ready about every
/// millisecond, and each stream takes about 8 ms to fill its next one, so
/// waiting this long delays no stream.
const PARTNER_WAIT: Duration = Duration::from_millis(2);

/// The most chunks of an ingest that skip waiting after a wait in vain.
const MAX_SKIPPED_WAITS: u32 = 16;

/// One ingest's record of waiting in vain. Streams that count as streaming
/// may stall; after a wait in which no partner came, this ingest's next
/// 1, 2, 4 ... up to [`MAX_SKIPPED_WAITS`] chunks do not wait (they still
/// take a partner that is waiting), so a fast stream beside stalled ones is
/// held up at one chunk in seventeen at most.
#[derive(Debug, Default)]
pub(crate) struct Patience {
    skip: u32,
    backoff: u32,
}

impl Patience {
    fn may_wait(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    fn met(&mut self) {
        self.backoff = 0;
    }

    fn waited_in_vain(&mut self) {
        self.backoff = (self.backoff * 2).clamp(1, MAX_SKIPPED_WAITS);
        self.skip = self.backoff;
    }
}

/// A chunk left to be hashed by whoever comes next.
struct Waiting {
    /// Tells this chunk from a later one of another thread.
    ticket: u64,
    digester: Digester,
    chunk: ChunkBuf,
    hashed: mpsc::SyncSender<(Digester, ChunkBuf)>,
}

struct Meeting {
    waiting: Option<Waiting>,
    tickets: u64,
}

static MEETING: Mutex<Meeting> = Mutex::new(Meeting {
    waiting: None,
    tickets: 0,
});

fn lock_meeting() -> MutexGuard<'static, Meeting> {
    // The meeting holds no invariant a panic could break halfway.
    MEETING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Feeds `chunk` to `digester`, together with another ingest's chunk if one
/// is waiting, or, when `others` stream and `patience` allows, comes within
/// [`PARTNER_WAIT`].
///
/// Returns the digester and the chunk, or `None` when the thread that took
/// the chunk to hash died with it (another ingest's failure then fails this
/// one too; nothing is lost, the chunk was never written).
pub(crate) fn hash_paired(
    mut digester: Digester,
    chunk: ChunkBuf,
    others: bool,
    patience: &mut Patience,
) -> Option<(Digester, ChunkBuf)> {
    let wait = others && patience.may_wait();
    let mut meeting = lock_meeting();
    if let Some(partner) = meeting.waiting.take() {
        patience.met();
        drop(meeting);
        let Waiting {
            digester: mut partner_digester,
            chunk: partner_chunk,
            hashed,
            ..
        } = partner;
        Digester::update_pair(
            &mut digester,
            chunk.as_slice(),
            &mut partner_digester,
            partner_chunk.as_slice(),
        );
        // The partner waits for its chunk until it gets it.
        let _ = hashed.send((partner_digester, partner_chunk));
        return Some((digester, chunk));
    }
    if !wait {
        drop(meeting);
        digester.update_handed_over(chunk.as_slice());
        return Some((digester, chunk));
    }
    let (hashed, done) = mpsc::sync_channel(1);
    meeting.tickets += 1;
    let ticket = meeting.tickets;
    meeting.waiting = Some(Waiting {
        ticket,
        digester,
        chunk,
        hashed,
    });
    drop(meeting);
    match done.recv_timeout(PARTNER_WAIT) {
        Ok(result) => {
            patience.met();
            return Some(result);
        }
        Err(RecvTimeoutError::Disconnected) => return None,
        Err(RecvTimeoutError::Timeout) => {}
    }
    let mut meeting = lock_meeting();
    if meeting.waiting.as_ref().is_some_and(|w| w.ticket == ticket) {
        let Waiting {
            mut digester,
            chunk,
            ..
        } = meeting.waiting.take().expect("checked above");
        drop(meeting);
        patience.waited_in_vain();
        digester.update_handed_over(chunk.as_slice());
        return Some((digester, chunk));
    }
    drop(meeting);
    // A partner took the chunk just as the wait ended: it is being hashed.
    patience.met();
    done.recv().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256_of;

    fn chunk_of(data: &[u8]) -> ChunkBuf {
        let mut chunk = ChunkBuf::with_capacity(1 << 20);
        chunk.fill(data);
        chunk
    }

    #[test]
    fn concurrent_chunks_hash_as_each_alone() {
        let inputs: Vec<Vec<u8>> = (0..8u8)
            .map(|i| (0..300_000u32).map(|j| (j as u8) ^ i).collect())
            .collect();
        std::thread::scope(|scope| {
            for data in &inputs {
                scope.spawn(move || {
                    let mut patience = Patience::default();
                    let mut digester = Digester::sha256();
                    for piece in data.chunks(70_000) {
                        let chunk = chunk_of(piece);
                        let (next, back) = hash_paired(digester, chunk, true, &mut patience)
                            .expect("no thread died");
                        assert_eq!(back.as_slice(), piece, "the same chunk comes back");
                        digester = next;
                    }
                    assert_eq!(digester.digest(), sha256_of(data));
                });
            }
        });
    }

    #[test]
    fn a_lone_chunk_is_hashed_after_the_wait() {
        let data = vec![7u8; 100_000];
        let (digester, _) = hash_paired(
            Digester::sha256(),
            chunk_of(&data),
            true,
            &mut Patience::default(),
        )
        .unwrap();
        assert_eq!(digester.digest(), sha256_of(&data));
    }

    #[test]
    fn after_waiting_in_vain_fewer_chunks_wait() {
        let mut patience = Patience::default();
        let waits = |patience: &mut Patience, chunks: usize| {
            (0..chunks).filter(|_| patience.may_wait()).count()
        };
        assert_eq!(waits(&mut patience, 5), 5, "patient at first");
        patience.waited_in_vain();
        patience.waited_in_vain();
        patience.waited_in_vain();
        // 4 chunks skip the wait, the fifth waits again.
        assert_eq!(waits(&mut patience, 5), 1);
        for _ in 0..10 {
            patience.waited_in_vain();
        }
        assert_eq!(waits(&mut patience, 17), 1, "at most 16 skip");
        patience.met();
        assert_eq!(waits(&mut patience, 3), 3, "patient again once met");
    }
}
