//! A 200 MB upload to a real sshd with flat memory: its own test binary, so the peak resident
//! memory measured is this upload's alone.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use caph_ssh::{ConnectEvent, connect_when_ready};
use sha2::Digest;
use support::{Sshd, peak_rss, require_sshd};
use tokio::io::{AsyncRead, ReadBuf};

/// 200 MB: far more than the memory bound below, so buffering the data would show.
const UPLOAD_BYTES: u64 = 200 * 1024 * 1024;

/// Growth of peak resident memory allowed during the upload. The upload keeps one 128 KiB chunk
/// plus russh's bounded channel queue and window in flight (a few MiB); 64 MiB leaves room for the
/// allocator and the runtime while still being far below the 200 MB that buffering would cost.
const MEMORY_GROWTH_LIMIT: u64 = 64 * 1024 * 1024;

/// Deterministic pseudo-random bytes (xorshift64), generated on demand: nothing is held in memory.
struct Generator {
    state: u64,
    remaining: u64,
}

impl Generator {
    fn new(size: u64) -> Generator {
        Generator {
            state: 0x9E37_79B9_7F4A_7C15,
            remaining: size,
        }
    }
}

impl AsyncRead for Generator {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let count = (buf.remaining() as u64).min(self.remaining) as usize;
        let mut bytes = Vec::with_capacity(count);
        while bytes.len() < count {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let word = self.state.to_le_bytes();
            let take = (count - bytes.len()).min(8);
            bytes.extend_from_slice(&word[..take]);
        }
        buf.put_slice(&bytes);
        self.remaining -= count as u64;
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_upload_streams_with_flat_memory_and_is_verified() {
    require_sshd!("a_200_mb_upload_streams_with_flat_memory_and_is_verified");
    let mut expected = sha2::Sha256::new();
    let mut generator = Generator::new(UPLOAD_BYTES);
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        let mut buf = ReadBuf::new(&mut chunk);
        let waker = std::task::Waker::noop();
        let _ = Pin::new(&mut generator).poll_read(&mut Context::from_waker(waker), &mut buf);
        if buf.filled().is_empty() {
            break;
        }
        expected.update(buf.filled());
    }
    let expected = hex::encode(expected.finalize());
    drop(chunk);

    let mut sshd = Sshd::prepare();
    sshd.start();
    let session = connect_when_ready(&sshd.pinned_config(), &mut |_: ConnectEvent<'_>| {})
        .await
        .unwrap();
    let target = sshd.dir.path().join("rootfs.tar.zst");
    let before = peak_rss();
    let started = Instant::now();
    let mut last_progress = 0;
    let mut progress_calls = 0u64;
    let report = session
        .upload(
            Generator::new(UPLOAD_BYTES),
            target.to_str().unwrap(),
            0o600,
            &mut |bytes| {
                assert!(bytes > last_progress);
                last_progress = bytes;
                progress_calls += 1;
            },
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let growth = peak_rss().saturating_sub(before);
    eprintln!(
        "uploaded {} MiB in {elapsed:?} ({:.1} MiB/s), peak RSS grew by {} KiB, {progress_calls} progress reports",
        UPLOAD_BYTES >> 20,
        (UPLOAD_BYTES >> 20) as f64 / elapsed.as_secs_f64(),
        growth >> 10
    );
    assert_eq!(report.bytes, UPLOAD_BYTES);
    assert_eq!(report.sha256, expected);
    assert_eq!(last_progress, UPLOAD_BYTES);
    assert_eq!(std::fs::metadata(&target).unwrap().len(), UPLOAD_BYTES);
    assert!(
        growth < MEMORY_GROWTH_LIMIT,
        "peak RSS grew by {growth} bytes"
    );
}
