//! The compression stage: none, gzip on worker threads in fixed-size members, or zstd's own
//! multithreaded mode, on a thread of its own fed by the walker through [`TarPipe`]; and the
//! output stage, on another, that hashes and counts what is written and starts its writeback
//! early.
//!
//! Parallel gzip cuts the uncompressed stream into [`GZIP_CHUNK`]-byte chunks, compresses each
//! into an independent gzip member on a worker thread with libdeflate, and writes the members in
//! order. libdeflate compresses whole buffers, which is exactly what fixed chunks are, and on a
//! Debian rootfs its level 6 is both smaller than pigz -6 and about three times cheaper in CPU
//! (zlib-rs level 6 was cheaper still but 2% larger than pigz). The
//! chunk boundaries depend only on the input, never on thread timing, so the output is the same
//! for any number of threads. Concatenated members are one valid gzip file (RFC 1952 §2.2) that
//! GNU gzip, GNU tar and installimage read.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use libdeflater::{CompressionLvl, Compressor, Crc};
use sha2::{Digest, Sha256};
use zstd::stream::raw::CParameter;

use super::Compression;

/// Uncompressed bytes per gzip member. 1 MiB loses well under 1% of ratio to the missing
/// shared window at member starts, and keeps the memory per thread small.
pub(crate) const GZIP_CHUNK: usize = 1 << 20;

/// Uncompressed bytes per zstd job. zstd's default for level 3 is 8 MiB, which puts a
/// two-worker pack at about 65 MiB of RSS. 2 MiB jobs kept it at 30 MiB but made the workers
/// wait for each other's input ranges (measured on the benchmark tree: zstd alone on the tar
/// stream took 0.79 s with 2 MiB jobs, 0.70 s with 8 MiB); 4 MiB jobs pack that tree in 0.79 s
/// against 0.82 s with 2 MiB, at 42 MiB of RSS.
const ZSTD_JOB_SIZE: u32 = 4 << 20;

/// Each zstd job starts with an eighth of the window before it as history (6, zstd's own
/// choice for level 3). The whole window (9) made the output 0.7% smaller on the benchmark tree
/// but cost 6% more time, as every job hashes its history again; with 6 the output is still 2%
/// smaller than `zstd -T0 -3`'s.
const ZSTD_OVERLAP_LOG: u32 = 6;

/// Chunks in flight per worker thread. Members are written in order, so one descheduled worker
/// holds up the rest; on a busy machine two per thread stalled the pipeline (half the CPU share
/// of pigz), four keep it flowing for about 5 MiB per thread.
const IN_FLIGHT_PER_THREAD: usize = 4;

/// The compressor between the tar stream and the output.
pub(crate) enum Encoder<W: Write> {
    None(W),
    Gzip(ParallelGzip<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> std::fmt::Debug for Encoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoder::None(_) => "Encoder::None",
            Encoder::Gzip(_) => "Encoder::Gzip",
            Encoder::Zstd(_) => "Encoder::Zstd",
        })
    }
}

impl<W: Write> Encoder<W> {
    pub(crate) fn new(compression: Compression, threads: usize, inner: W) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Encoder::None(inner),
            Compression::Gzip { level } => Encoder::Gzip(ParallelGzip::new(inner, level, threads)),
            Compression::Zstd { level } => {
                let mut encoder = zstd::stream::write::Encoder::new(inner, level)?;
                encoder.include_checksum(true)?;
                // At least one worker even on one core: zstd's output with one or more workers
                // does not depend on their number, but differs from the single-threaded mode.
                let workers = u32::try_from(threads.max(1)).unwrap_or(u32::MAX);
                encoder.multithread(workers)?;
                encoder.set_parameter(CParameter::JobSize(ZSTD_JOB_SIZE))?;
                encoder.set_parameter(CParameter::OverlapSizeLog(ZSTD_OVERLAP_LOG))?;
                Encoder::Zstd(encoder)
            }
        })
    }
}

impl<W: Write> Encoder<W> {
    /// Flushes everything and returns the output.
    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(mut inner) => {
                inner.flush()?;
                Ok(inner)
            }
            Encoder::Gzip(gzip) => gzip.finish(),
            Encoder::Zstd(zstd) => {
                let mut inner = zstd.finish()?;
                inner.flush()?;
                Ok(inner)
            }
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(inner) => inner.write(buf),
            Encoder::Gzip(gzip) => gzip.write(buf),
            Encoder::Zstd(zstd) => zstd.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::None(inner) => inner.write_all(buf),
            Encoder::Gzip(gzip) => gzip.write_all(buf),
            Encoder::Zstd(zstd) => zstd.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushing mid-stream would change member/frame boundaries and so the output bytes;
        // the stream is only flushed by `finish`.
        Ok(())
    }
}

struct Job {
    input: Vec<u8>,
    output: Vec<u8>,
    reply: SyncSender<Done>,
}

struct Done {
    input: Vec<u8>,
    output: io::Result<Vec<u8>>,
}

/// gzip members compressed on worker threads and written in order.
pub(crate) struct ParallelGzip<W: Write> {
    inner: Option<W>,
    chunk: Vec<u8>,
    jobs: Option<Sender<Job>>,
    pending: VecDeque<Receiver<Done>>,
    max_pending: usize,
    free_inputs: Vec<Vec<u8>>,
    free_outputs: Vec<Vec<u8>>,
    workers: Vec<JoinHandle<()>>,
}

impl<W: Write> ParallelGzip<W> {
    fn new(inner: W, level: u32, threads: usize) -> Self {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads)
            .map(|_| {
                let queue = Arc::clone(&queue);
                std::thread::spawn(move || gzip_worker(&queue, level))
            })
            .collect();
        ParallelGzip {
            inner: Some(inner),
            chunk: Vec::with_capacity(GZIP_CHUNK),
            jobs: Some(jobs),
            pending: VecDeque::new(),
            max_pending: threads * IN_FLIGHT_PER_THREAD,
            free_inputs: Vec::new(),
            free_outputs: Vec::new(),
            workers,
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        let fresh = self
            .free_inputs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(GZIP_CHUNK));
        let input = std::mem::replace(&mut self.chunk, fresh);
        let output = self.free_outputs.pop().unwrap_or_default();
        let (reply, done) = mpsc::sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or_else(worker_gone)?;
        jobs.send(Job {
            input,
            output,
            reply,
        })
        .map_err(|_| worker_gone())?;
        self.pending.push_back(done);
        // Bounded: wait for the oldest member once enough are in flight.
        while self.pending.len() > self.max_pending {
            self.collect_front(true)?;
        }
        // Write whatever else is ready already, so output (and its progress) keeps flowing.
        while self.collect_front(false)? {}
        Ok(())
    }

    /// Writes the oldest member if it is done (or waits for it when `block`); returns whether
    /// one was written.
    fn collect_front(&mut self, block: bool) -> io::Result<bool> {
        let Some(front) = self.pending.front() else {
            return Ok(false);
        };
        let done = if block {
            front.recv().map_err(|_| worker_gone())?
        } else {
            match front.try_recv() {
                Ok(done) => done,
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => return Err(worker_gone()),
            }
        };
        self.pending.pop_front();
        let output = done.output?;
        self.inner
            .as_mut()
            .ok_or_else(worker_gone)?
            .write_all(&output)?;
        let mut input = done.input;
        input.clear();
        self.free_inputs.push(input);
        self.free_outputs.push(output);
        Ok(true)
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.chunk.is_empty() {
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.collect_front(true)?;
        }
        let mut inner = self.inner.take().ok_or_else(worker_gone)?;
        inner.flush()?;
        Ok(inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = GZIP_CHUNK - self.chunk.len();
        let taken = room.min(buf.len());
        self.chunk.extend_from_slice(&buf[..taken]);
        if self.chunk.len() == GZIP_CHUNK {
            self.submit()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        // Closing the queue ends the workers; their replies to dropped receivers are ignored.
        self.jobs = None;
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn worker_gone() -> io::Error {
    io::Error::other("a gzip compression worker stopped unexpectedly")
}

fn gzip_worker(queue: &Mutex<Receiver<Job>>, level: u32) {
    // The level was validated (1 to 12); libdeflate's default stands in should that change.
    let level = i32::try_from(level)
        .ok()
        .and_then(|level| CompressionLvl::new(level).ok())
        .unwrap_or_default();
    let mut compressor = Compressor::new(level);
    loop {
        let job = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = job else { return };
        let output = gzip_member(&mut compressor, &job.input, job.output);
        let _ = job.reply.send(Done {
            input: job.input,
            output,
        });
    }
}

/// The fixed gzip member header: deflate, no flags, no mtime, no extra flags, OS "Unix".
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// One complete gzip member (RFC 1952): the fixed header, the chunk as one raw deflate stream
/// (libdeflate, whole-buffer), and the CRC-32 and length trailer.
fn gzip_member(
    compressor: &mut Compressor,
    input: &[u8],
    mut output: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let bound = compressor.deflate_compress_bound(input.len());
    output.clear();
    output.resize(GZIP_HEADER.len() + bound, 0);
    output[..GZIP_HEADER.len()].copy_from_slice(&GZIP_HEADER);
    let length = compressor
        .deflate_compress(input, &mut output[GZIP_HEADER.len()..])
        .map_err(|error| io::Error::other(format!("deflate failed: {error}")))?;
    output.truncate(GZIP_HEADER.len() + length);
    let mut crc = Crc::new();
    crc.update(input);
    output.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 by definition.
    output.extend_from_slice(&(input.len() as u32).to_le_bytes());
    Ok(output)
}

/// Bytes per block handed from one stage to the next.
const PIPE_BLOCK: usize = 1 << 20;
/// Blocks queued between two stages: the walker reads ahead this far while the compressor waits
/// on its workers, and the compressor runs ahead of a slow write as far.
const PIPE_DEPTH: usize = 4;

/// The sending side of a pipe between two stages: a `Write` that fills blocks and sends them.
#[derive(Debug)]
pub(crate) struct BlockPipe {
    current: Vec<u8>,
    full: SyncSender<Vec<u8>>,
    empty: Receiver<Vec<u8>>,
}

/// The receiving side: the blocks in order, each handed back for reuse once consumed.
#[derive(Debug)]
struct Blocks {
    full: Receiver<Vec<u8>>,
    empty: SyncSender<Vec<u8>>,
}

/// A connected pipe.
fn block_pipe() -> (BlockPipe, Blocks) {
    let (full_sender, full_receiver) = mpsc::sync_channel(PIPE_DEPTH);
    let (empty_sender, empty_receiver) = mpsc::sync_channel(PIPE_DEPTH + 2);
    let pipe = BlockPipe {
        current: Vec::with_capacity(PIPE_BLOCK),
        full: full_sender,
        empty: empty_receiver,
    };
    (
        pipe,
        Blocks {
            full: full_receiver,
            empty: empty_sender,
        },
    )
}

/// The walker's side of the pipeline: the tar stream goes in here.
pub(crate) type TarPipe = BlockPipe;

impl BlockPipe {
    fn send(&mut self) -> io::Result<()> {
        let next = self
            .empty
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIPE_BLOCK));
        let block = std::mem::replace(&mut self.current, next);
        self.full
            .send(block)
            .map_err(|_| io::Error::other("the next stage of the pipeline stopped"))
    }

    /// Sends what is left; dropping the pipe then tells the next stage that this was all.
    pub(crate) fn close(mut self) -> io::Result<()> {
        if !self.current.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

impl Write for BlockPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let taken = (PIPE_BLOCK - self.current.len()).min(buf.len());
        self.current.extend_from_slice(&buf[..taken]);
        if self.current.len() == PIPE_BLOCK {
            self.send()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Blocks {
    /// Hands every block to `consume` until the sender is dropped. On an error it stops
    /// receiving, so the sender's next send fails and the stage before stops too.
    fn for_each(self, mut consume: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        for mut block in self.full {
            consume(&block)?;
            block.clear();
            // Recycled if the pipe still wants it; otherwise simply freed.
            let _ = self.empty.try_send(block);
        }
        Ok(())
    }
}

/// The stages after the walker, started by [`CompressorThread::run`].
#[derive(Debug)]
pub(crate) struct CompressorThread {
    blocks: Blocks,
}

/// The walker's pipe and the body of the thread that takes the tar stream from it.
pub(crate) fn tar_pipe() -> (TarPipe, CompressorThread) {
    let (pipe, blocks) = block_pipe();
    (pipe, CompressorThread { blocks })
}

impl CompressorThread {
    /// Compresses the tar stream into `sink`, and returns it flushed. The output (sha256, the
    /// writes and their writeback) runs on a thread of its own, fed through another pipe, so
    /// the thread that hands jobs to the compressor's workers never waits for the disk: a worker
    /// that finishes finds its next job ready. Without compression, this thread writes itself.
    pub(crate) fn run<W: Write + Send>(
        self,
        compression: Compression,
        threads: usize,
        sink: HashingWriter<W>,
    ) -> io::Result<HashingWriter<W>> {
        if compression == Compression::None {
            return write_blocks(self.blocks, sink);
        }
        let (pipe, output_blocks) = block_pipe();
        std::thread::scope(|scope| {
            let writer = scope.spawn(move || write_blocks(output_blocks, sink));
            let compressed = (|| {
                let mut encoder = Encoder::new(compression, threads, pipe)?;
                self.blocks.for_each(|block| encoder.write_all(block))?;
                encoder.finish()?.close()
            })();
            // When compressing failed, its pipe is gone by now and the output thread ends too.
            let written = writer
                .join()
                .map_err(|_| io::Error::other("the output thread panicked"))?;
            // A failed write is the cause of whatever the compressor saw.
            let sink = written?;
            compressed?;
            Ok(sink)
        })
    }
}

/// The output stage: every block into the hashing sink, which is flushed and returned.
fn write_blocks<W: Write>(
    blocks: Blocks,
    mut sink: HashingWriter<W>,
) -> io::Result<HashingWriter<W>> {
    blocks.for_each(|block| sink.write_all(block))?;
    sink.flush()?;
    Ok(sink)
}

/// Bytes written between two requests to start writing the file back to disk.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// The output file, whose written pages are handed to the kernel's writeback as they come,
/// so the final `fsync` waits for the last few megabytes instead of the whole archive: the
/// disk works while the compressor does. `POSIX_FADV_DONTNEED` on a range starts writeback of
/// its dirty pages without waiting for it (and drops the pages already clean, which the writer
/// never reads again).
#[derive(Debug)]
pub(crate) struct EarlyWriteback {
    file: std::fs::File,
    written: u64,
    requested: u64,
}

impl EarlyWriteback {
    pub(crate) fn new(file: std::fs::File) -> Self {
        EarlyWriteback {
            file,
            written: 0,
            requested: 0,
        }
    }

    pub(crate) fn into_inner(self) -> std::fs::File {
        self.file
    }
}

impl Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.file.write(buf)?;
        self.written += written as u64;
        if self.written - self.requested >= WRITEBACK_BYTES {
            // Only advice: a file system that ignores it just syncs more at the end.
            let length = std::num::NonZeroU64::new(self.written - self.requested);
            let _ = rustix::fs::fadvise(
                &self.file,
                self.requested,
                length,
                rustix::fs::Advice::DontNeed,
            );
            self.requested = self.written;
        }
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The last stage before the file: hashes and counts every byte written.
#[derive(Debug)]
pub(crate) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: Arc<AtomicU64>,
}

impl<W: Write> HashingWriter<W> {
    pub(crate) fn new(inner: W, written: Arc<AtomicU64>) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written,
        }
    }

    /// The inner writer and the lowercase hex sha256 of everything written.
    pub(crate) fn into_parts(self) -> (W, String) {
        (self.inner, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.written.fetch_add(written as u64, Ordering::Relaxed);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
