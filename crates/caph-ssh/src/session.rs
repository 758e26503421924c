//! An authenticated SSH session: commands with streamed output, and verified streamed uploads.

use caph_core::plan::quote;
use std::fmt;
use std::net::SocketAddr;

use russh::client::Handle;
use russh::{ChannelMsg, ChannelWriteHalf};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::connect::ClientHandler;
use crate::connection::ConnectionThread;
use crate::error::SshError;
use crate::keys::PublicKey;
use caph_core::digest::Sha256Hex;

/// Longest line handed to the callback in one piece: a program that prints megabytes without a
/// newline (a progress bar using `\r`, a binary by mistake) must not grow memory without bound;
/// 64 KiB is far beyond any real log line.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Size of one read from an upload source: 32 SSH packets (32 KiB each by default), large enough
/// that reads, hashing and channel bookkeeping are cheap per byte (a `tokio::fs::File` read is a
/// trip to a blocking thread and back: 128 KiB reads spent more CPU on those trips than on
/// reading), small enough to keep memory flat.
const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;

/// Chunks read (and hashed) ahead of the one being sent: enough to keep reading and hashing busy
/// while the sender waits for the server's window (2 MiB with OpenSSH), few enough that memory
/// stays a few MiB whatever the size of the upload.
const READ_AHEAD_CHUNKS: usize = 4;

/// Most output kept by [`Session::exec_capture`] per stream; it is meant for short answers
/// (`hostname`, `sha256sum`), and a runaway command must not exhaust memory.
const MAX_CAPTURE_BYTES: usize = 1024 * 1024;

/// Longest command text quoted in an error: enough to recognise a step, not a whole script.
const MAX_COMMAND_IN_ERROR: usize = 120;

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error (SSH extended data of type 1).
    Stderr,
}

/// One line of a remote command's output, without its line terminator (a trailing `\r` is kept
/// out too). The last line is delivered even if the command did not end it with a newline.
#[derive(Debug, Clone, Copy)]
pub struct OutputLine<'a> {
    /// Which stream the line came from.
    pub stream: OutputStream,
    /// The line's text (invalid UTF-8 replaced).
    pub text: &'a str,
}

/// What [`Session::exec_capture`] collected.
#[derive(Debug, Clone)]
pub struct CapturedOutput {
    /// The command's exit status.
    pub exit_code: u32,
    /// Standard output, lines joined with `\n`.
    pub stdout: String,
    /// Standard error, lines joined with `\n`.
    pub stderr: String,
}

/// What an upload wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// Bytes written.
    pub bytes: u64,
    /// Lowercase hex sha256 of the bytes, as computed by the server and found equal to the one
    /// computed here (or, for [`Session::upload_expecting`], to the one expected).
    pub sha256: String,
}

/// What the server's digest is compared with.
#[derive(Clone, Copy)]
enum Reference<'a> {
    /// The digest of the bytes sent, computed here while sending them.
    HashWhileSending,
    /// A digest the caller knew beforehand; nothing is hashed here.
    Expected(&'a Sha256Hex),
}

/// A connected, authenticated session. Dropping it closes the connection.
pub struct Session {
    // Declared before `connection`, so it is dropped first: russh then winds the session down
    // on the connection thread, which gives it a moment before stopping.
    handle: Handle<ClientHandler>,
    addr: SocketAddr,
    host_key: PublicKey,
    connection: ConnectionThread,
}

impl fmt::Debug for Session {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Session")
            .field("addr", &self.addr)
            .field("host_key", &self.host_key.fingerprint())
            .finish()
    }
}

/// Stdin for a command: the source, and an observer that sees every chunk before it is sent.
struct StdinFeed<'a, R> {
    source: R,
    observe: &'a mut (dyn FnMut(&[u8]) + Send),
}

/// Why feeding stdin stopped early.
enum FeedFailure {
    Source(std::io::Error),
    /// The channel or the connection is gone; the reading side reports how.
    Channel,
}

impl Session {
    pub(crate) fn new(
        handle: Handle<ClientHandler>,
        addr: SocketAddr,
        host_key: PublicKey,
        connection: ConnectionThread,
    ) -> Session {
        Session {
            handle,
            addr,
            host_key,
            connection,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The host key the server presented (and the policy accepted).
    pub fn host_key(&self) -> &PublicKey {
        &self.host_key
    }

    /// Whether the connection has ended (server gone, keepalives unanswered, or closed).
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Runs `command` (through the user's shell, as `ssh host command` does), streaming its stdout
    /// and stderr line by line to `on_line` as they arrive, with stdin closed. Returns the exit
    /// status; a command killed by a signal, one that ends without a status, and a connection lost
    /// meanwhile are errors.
    pub async fn exec(
        &self,
        command: &str,
        on_line: &mut (dyn FnMut(OutputLine<'_>) + Send),
    ) -> Result<u32, SshError> {
        self.run::<tokio::io::Empty>(command, None, on_line).await
    }

    /// Like [`Session::exec`], with `stdin` streamed to the command (then closed).
    pub async fn exec_with_stdin<R: AsyncRead + Unpin + Send>(
        &self,
        command: &str,
        stdin: R,
        on_line: &mut (dyn FnMut(OutputLine<'_>) + Send),
    ) -> Result<u32, SshError> {
        let mut ignore = |_: &[u8]| {};
        let feed = StdinFeed {
            source: stdin,
            observe: &mut ignore,
        };
        self.run(command, Some(feed), on_line).await
    }

    /// Runs `command` and collects its output (each stream capped at 1 MiB; lines joined with `\n`).
    /// For short answers; use [`Session::exec`] to follow long-running steps.
    pub async fn exec_capture(&self, command: &str) -> Result<CapturedOutput, SshError> {
        let mut stdout = String::new();
        let mut stderr = String::new();
        let exit_code = self
            .exec(command, &mut |line: OutputLine<'_>| {
                let target = match line.stream {
                    OutputStream::Stdout => &mut stdout,
                    OutputStream::Stderr => &mut stderr,
                };
                keep_line(target, line.text);
            })
            .await?;
        Ok(CapturedOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    /// Streams `source` to `remote_path` on the server with flat memory: the bytes go to a temporary
    /// file beside the target (`<path>.caph-upload-<random>`) while their sha256 is computed here;
    /// on the server, `tee` hands every byte it writes to the file on to a sha256 hasher as well
    /// (OpenSSL's where the server has it, else `sha256sum`), so the server's digest covers exactly
    /// what was written, as it was written, without reading the file a second time. Only when both
    /// digests match is the file renamed over `remote_path` (atomic within the directory) with
    /// permissions `mode`. `on_progress` receives the number of bytes sent so far. On any failure
    /// the temporary file is removed (when the connection still allows it) and the target is
    /// untouched.
    pub async fn upload<R: AsyncRead + Unpin + Send>(
        &self,
        source: R,
        remote_path: &str,
        mode: u32,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<UploadReport, SshError> {
        self.upload_checked(
            source,
            remote_path,
            mode,
            Reference::HashWhileSending,
            on_progress,
        )
        .await
    }

    /// Like [`Session::upload`], for a source whose sha256 is known beforehand (from the checksum
    /// file written beside it): nothing is hashed here, which halves the client's CPU per byte;
    /// the server hashes what it writes as it writes it, as always, and the file is renamed over
    /// `remote_path` only when that digest equals `expected`. The check is as strong: a source
    /// that differs from its recorded digest and bytes damaged on the way both fail it, with
    /// [`SshError::ExpectedDigestMismatch`] naming both digests; the temporary file is removed
    /// and the target never appears.
    pub async fn upload_expecting<R: AsyncRead + Unpin + Send>(
        &self,
        source: R,
        remote_path: &str,
        mode: u32,
        expected: &Sha256Hex,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<UploadReport, SshError> {
        self.upload_checked(
            source,
            remote_path,
            mode,
            Reference::Expected(expected),
            on_progress,
        )
        .await
    }

    async fn upload_checked<R: AsyncRead + Unpin + Send>(
        &self,
        source: R,
        remote_path: &str,
        mode: u32,
        reference: Reference<'_>,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<UploadReport, SshError> {
        let temp_path = format!("{remote_path}.caph-upload-{:016x}", rand::random::<u64>());
        let result = self
            .upload_to_temp(
                source,
                remote_path,
                &temp_path,
                mode,
                reference,
                on_progress,
            )
            .await;
        if result.is_err() && !self.is_closed() {
            // Best effort: the error being returned is the one that matters.
            let _ = self
                .exec_capture(&format!("rm -f -- {}", quote(&temp_path)))
                .await;
        }
        result
    }

    /// Streams `source` into the standard input of `consumer` (shell text the caller built and
    /// quoted, such as `xz -dc | dd of=/dev/sda`) with the same check as [`Session::upload`]:
    /// the sha256 is computed here as the bytes are sent, and on the server by the `tee` that hands
    /// them to the consumer, so both digests cover exactly what the consumer received. `target`
    /// names what is written (`/dev/sda`) in errors. Fails when the consumer or `tee` exits
    /// non-zero (with the consumer's output) or when the digests differ (with both).
    pub async fn stream_into<R: AsyncRead + Unpin + Send>(
        &self,
        source: R,
        consumer: &str,
        target: &str,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<UploadReport, SshError> {
        let command = stream_and_hash_command(consumer);
        let HashedRun {
            exit_code,
            stdout,
            stderr,
            sent,
            sent_digest,
        } = self
            .run_hashed(
                &command,
                source,
                target,
                Reference::HashWhileSending,
                on_progress,
            )
            .await?;
        let written = WriteReport::parse(&stdout);
        let consumer_status = stdout
            .lines()
            .find_map(|line| line.strip_prefix(CONSUMER_STATUS_PREFIX))
            .and_then(|status| status.trim().parse::<u32>().ok());
        // The consumer's failure explains a broken pipe in `tee`, so it is reported first.
        let failed_status = match (consumer_status, written.tee_status) {
            (Some(status), _) if status != 0 => Some(status),
            (None, _) => Some(exit_code.max(1)),
            (_, Some(0)) if exit_code == 0 => None,
            (_, Some(status)) if status != 0 => Some(status),
            _ => Some(exit_code.max(1)),
        };
        if let Some(status) = failed_status {
            return Err(SshError::UploadCommandFailed {
                addr: self.addr,
                remote_path: target.to_owned(),
                command: consumer.to_owned(),
                exit_code: status,
                stderr: stderr.trim_end().to_owned(),
            });
        }
        let sha256 = written.digest.unwrap_or_default();
        if let Some(mismatch) = self.digest_mismatch(
            target,
            &sha256,
            Reference::HashWhileSending,
            sent_digest.as_deref(),
        ) {
            return Err(mismatch);
        }
        Ok(UploadReport {
            bytes: sent,
            sha256,
        })
    }

    /// The error when the server's digest (`remote`, empty when it printed none) differs from
    /// the reference: the digest computed while sending (`sent_digest`) or the expected one.
    fn digest_mismatch(
        &self,
        target: &str,
        remote: &str,
        reference: Reference<'_>,
        sent_digest: Option<&str>,
    ) -> Option<SshError> {
        match reference {
            Reference::Expected(expected) if remote == expected.as_str() => None,
            Reference::Expected(expected) => Some(SshError::ExpectedDigestMismatch {
                addr: self.addr,
                remote_path: target.to_owned(),
                expected: expected.to_string(),
                remote: remote.to_owned(),
            }),
            Reference::HashWhileSending => {
                let sent = sent_digest.unwrap_or_default();
                (remote != sent || remote.is_empty()).then(|| SshError::ChecksumMismatch {
                    addr: self.addr,
                    remote_path: target.to_owned(),
                    sent: sent.to_owned(),
                    remote: remote.to_owned(),
                })
            }
        }
    }

    /// Runs `command` with `source` on its stdin, hashing what is sent unless the reference is a
    /// digest known beforehand; `target` names what is written in errors. The caller reads the
    /// server's side of the story from the output.
    async fn run_hashed<R: AsyncRead + Unpin + Send>(
        &self,
        command: &str,
        source: R,
        target: &str,
        reference: Reference<'_>,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<HashedRun, SshError> {
        let mut hasher = match reference {
            Reference::HashWhileSending => Some(Sha256::new()),
            Reference::Expected(_) => None,
        };
        let mut sent: u64 = 0;
        let mut observe = |chunk: &[u8]| {
            if let Some(hasher) = &mut hasher {
                hasher.update(chunk);
            }
            sent += chunk.len() as u64;
            on_progress(sent);
        };
        let mut stdout = String::new();
        let mut stderr = String::new();
        let feed = StdinFeed {
            source,
            observe: &mut observe,
        };
        let exit_code = self
            .run(
                command,
                Some(feed),
                &mut |line: OutputLine<'_>| match line.stream {
                    OutputStream::Stdout => keep_line(&mut stdout, line.text),
                    OutputStream::Stderr => keep_line(&mut stderr, line.text),
                },
            )
            .await
            .map_err(|error| match error {
                SshError::StdinSource { source, .. } => SshError::UploadSource {
                    addr: self.addr,
                    remote_path: target.to_owned(),
                    source,
                },
                other => other,
            })?;
        Ok(HashedRun {
            exit_code,
            stdout,
            stderr,
            sent,
            sent_digest: hasher.map(|hasher| hex::encode(hasher.finalize())),
        })
    }

    async fn upload_to_temp<R: AsyncRead + Unpin + Send>(
        &self,
        source: R,
        remote_path: &str,
        temp_path: &str,
        mode: u32,
        reference: Reference<'_>,
        on_progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<UploadReport, SshError> {
        let write_command = write_and_hash_command(temp_path);
        let HashedRun {
            exit_code,
            stdout,
            stderr,
            sent,
            sent_digest,
        } = self
            .run_hashed(&write_command, source, remote_path, reference, on_progress)
            .await?;
        let written = WriteReport::parse(&stdout);
        // The hasher's status is the command's; `tee`'s (did every byte reach the file?) comes
        // on its own line.
        let failed_status = match written.tee_status {
            _ if exit_code != 0 => Some(exit_code),
            Some(0) => None,
            Some(status) => Some(status),
            None => Some(exit_code.max(1)),
        };
        if let Some(status) = failed_status {
            return Err(self.upload_failed(remote_path, &write_command, status, stderr));
        }
        let sha256 = written.digest.unwrap_or_default();
        if let Some(mismatch) =
            self.digest_mismatch(remote_path, &sha256, reference, sent_digest.as_deref())
        {
            return Err(mismatch);
        }

        let rename_command = format!(
            "chmod {mode:o} -- {temp} && mv -f -- {temp} {target}",
            temp = quote(temp_path),
            target = quote(remote_path)
        );
        let renamed = self.exec_capture(&rename_command).await?;
        if renamed.exit_code != 0 {
            return Err(self.upload_failed(
                remote_path,
                &rename_command,
                renamed.exit_code,
                renamed.stderr,
            ));
        }
        Ok(UploadReport {
            bytes: sent,
            sha256,
        })
    }

    fn upload_failed(
        &self,
        remote_path: &str,
        command: &str,
        exit_code: u32,
        stderr: String,
    ) -> SshError {
        SshError::UploadCommandFailed {
            addr: self.addr,
            remote_path: remote_path.to_owned(),
            command: command.to_owned(),
            exit_code,
            stderr: stderr.trim_end().to_owned(),
        }
    }

    /// Opens a session channel, runs `command`, feeds stdin (if any) while reading output, and
    /// interprets how the channel ended.
    async fn run<R: AsyncRead + Unpin + Send>(
        &self,
        command: &str,
        stdin: Option<StdinFeed<'_, R>>,
        on_line: &mut (dyn FnMut(OutputLine<'_>) + Send),
    ) -> Result<u32, SshError> {
        let channel = match self.handle.channel_open_session().await {
            Ok(channel) => channel,
            Err(source) => return Err(self.refused_or_lost(command, source)),
        };
        if let Err(source) = channel.exec(true, command).await {
            return Err(self.refused_or_lost(command, source));
        }
        let (mut read_half, write_half) = channel.split();

        let feeding = async {
            let Some(feed) = stdin else {
                // Closed stdin, like `ssh host cmd < /dev/null`: a command that reads it gets EOF
                // instead of waiting forever.
                return match write_half.eof().await {
                    Ok(()) => Ok(()),
                    Err(_) => Err(FeedFailure::Channel),
                };
            };
            feed_stdin(feed, write_half, &self.connection).await
        };

        let mut stdout = LineBuffer::new(OutputStream::Stdout);
        let mut stderr = LineBuffer::new(OutputStream::Stderr);
        let reading = async {
            let mut ending = ChannelEnding::default();
            loop {
                match read_half.wait().await {
                    Some(ChannelMsg::Data { data }) => stdout.push(&data, on_line),
                    Some(ChannelMsg::ExtendedData { data, ext: 1 }) => stderr.push(&data, on_line),
                    Some(ChannelMsg::ExitStatus { exit_status }) => {
                        ending.exit_status = Some(exit_status)
                    }
                    Some(ChannelMsg::ExitSignal {
                        signal_name,
                        core_dumped,
                        ..
                    }) => {
                        ending.signal = Some((format!("{signal_name:?}"), core_dumped));
                    }
                    Some(ChannelMsg::Close) => {
                        ending.closed = true;
                        break;
                    }
                    Some(_) => {}
                    None => break,
                }
            }
            stdout.finish(on_line);
            stderr.finish(on_line);
            ending
        };

        let mut feeding = std::pin::pin!(feeding);
        let mut reading = std::pin::pin!(reading);
        let mut feed_done = false;
        let ending = loop {
            tokio::select! {
                result = &mut feeding, if !feed_done => {
                    feed_done = true;
                    // A channel failure is reported by the reading side, which sees how it ended.
                    if let Err(FeedFailure::Source(source)) = result {
                        return Err(SshError::StdinSource { addr: self.addr, command: short_command(command), source });
                    }
                }
                ending = &mut reading => break ending,
            }
        };

        if let Some(exit_status) = ending.exit_status {
            return Ok(exit_status);
        }
        if let Some((signal, core_dumped)) = ending.signal {
            return Err(SshError::Signalled {
                addr: self.addr,
                command: short_command(command),
                signal,
                core_dumped,
            });
        }
        if ending.closed && !self.connection_gone().await {
            return Err(SshError::NoExitStatus {
                addr: self.addr,
                command: short_command(command),
            });
        }
        Err(SshError::ConnectionLost {
            addr: self.addr,
            command: short_command(command),
        })
    }

    /// Whether the session task has ended. A channel can observe its end a moment before the
    /// handle does, so give the session task a short while to wind down.
    async fn connection_gone(&self) -> bool {
        /// A session that lost its socket ends within a scheduler tick or two; 200 ms is generous
        /// and only spent in the rare close-without-status case.
        const SETTLE: std::time::Duration = std::time::Duration::from_millis(200);
        let until = tokio::time::Instant::now() + SETTLE;
        while tokio::time::Instant::now() < until {
            if self.handle.is_closed() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.handle.is_closed()
    }

    fn refused_or_lost(&self, command: &str, source: russh::Error) -> SshError {
        if self.handle.is_closed() {
            return SshError::ConnectionLost {
                addr: self.addr,
                command: short_command(command),
            };
        }
        SshError::ExecRefused {
            addr: self.addr,
            command: short_command(command),
            source,
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }
}

/// Streams `feed`'s source into the channel, then sends EOF. The caller's task reads and observes
/// (hashes, reports progress); a relay on the connection thread hands the chunks to russh, packet
/// by packet as the server's window allows, next to russh's own session task. Reading runs ahead
/// of the relay by up to `READ_AHEAD_CHUNKS` chunks, so the next chunks are read and hashed while
/// the last ones wait for the window. Chunks are observed in the order they are sent, and every
/// byte observed is sent before EOF; a source error closes the channel instead, so the remote side
/// never takes a truncated input for a whole one.
async fn feed_stdin<R: AsyncRead + Unpin + Send>(
    feed: StdinFeed<'_, R>,
    write_half: ChannelWriteHalf<russh::client::Msg>,
    connection: &ConnectionThread,
) -> Result<(), FeedFailure> {
    let StdinFeed {
        mut source,
        observe,
    } = feed;
    let (chunk_sender, mut chunk_receiver) =
        tokio::sync::mpsc::channel::<bytes::Bytes>(READ_AHEAD_CHUNKS);
    // Ends when the reader drops its sender (all sent) or on a channel failure; hands the write
    // half back for the EOF or the close.
    let relay = connection.spawn(async move {
        while let Some(chunk) = chunk_receiver.recv().await {
            // `data_bytes` waits for the server's window, so what is in flight stays bounded:
            // the queued chunks plus russh's bounded channel buffer, for any size of upload.
            if write_half.data_bytes(chunk).await.is_err() {
                return (write_half, Err(FeedFailure::Channel));
            }
        }
        (write_half, Ok(()))
    });
    let read = async {
        let mut buffer = bytes::BytesMut::new();
        loop {
            // A fresh allocation whenever a chunk read earlier is still queued or held by russh:
            // handed over as it was read, without a copy.
            buffer.reserve(UPLOAD_CHUNK_BYTES);
            if source.read_buf(&mut buffer).await? == 0 {
                return Ok(());
            }
            let chunk = buffer.split().freeze();
            observe(&chunk);
            if chunk_sender.send(chunk).await.is_err() {
                // The relay stopped on a channel failure, which it reports.
                return Ok(());
            }
        }
    }
    .await;
    drop(chunk_sender);
    let Ok((write_half, sent)) = relay.await else {
        // Only when the connection thread is gone, and the connection with it.
        return Err(FeedFailure::Channel);
    };
    if let Err(error) = read {
        // Stop the remote side too, so it does not act on a truncated input.
        let _ = write_half.close().await;
        return Err(FeedFailure::Source(error));
    }
    sent?;
    match write_half.eof().await {
        Ok(()) => Ok(()),
        Err(_) => Err(FeedFailure::Channel),
    }
}

/// How a channel ended, as far as the server told us.
#[derive(Default)]
struct ChannelEnding {
    exit_status: Option<u32>,
    signal: Option<(String, bool)>,
    closed: bool,
}

/// Splits one stream's bytes into lines, across packet boundaries.
struct LineBuffer {
    stream: OutputStream,
    pending: Vec<u8>,
}

impl LineBuffer {
    fn new(stream: OutputStream) -> LineBuffer {
        LineBuffer {
            stream,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], on_line: &mut (dyn FnMut(OutputLine<'_>) + Send)) {
        for &byte in data {
            if byte == b'\n' {
                self.emit(on_line);
            } else {
                self.pending.push(byte);
                if self.pending.len() >= MAX_LINE_BYTES {
                    self.emit(on_line);
                }
            }
        }
    }

    fn finish(&mut self, on_line: &mut (dyn FnMut(OutputLine<'_>) + Send)) {
        if !self.pending.is_empty() {
            self.emit(on_line);
        }
    }

    fn emit(&mut self, on_line: &mut (dyn FnMut(OutputLine<'_>) + Send)) {
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        let text = String::from_utf8_lossy(&self.pending);
        on_line(OutputLine {
            stream: self.stream,
            text: &text,
        });
        self.pending.clear();
    }
}

/// Appends one line to captured output, up to `MAX_CAPTURE_BYTES`.
fn keep_line(captured: &mut String, text: &str) {
    if captured.len() + text.len() < MAX_CAPTURE_BYTES {
        captured.push_str(text);
        captured.push('\n');
    }
}

/// The line the upload command prints with `tee`'s exit status.
const TEE_STATUS_PREFIX: &str = "caph-upload-tee ";

/// The server side of an upload: creates `temp_path` (so a bad directory fails before any data
/// is sent) and streams stdin into it through `tee`, which hands the same bytes on to a sha256
/// hasher: OpenSSL's where it runs (it uses the CPU's SHA instructions, about five times faster
/// than coreutils' `sha256sum` here), else `sha256sum`. POSIX sh has no `pipefail`, so `tee`'s
/// status is printed on a line of its own through fd 3; the hasher's is the command's.
fn write_and_hash_command(temp_path: &str) -> String {
    let temp = quote(temp_path);
    // `umask 077` keeps a half-written file private; the final mode is set before the rename.
    format!(
        "umask 077 && : > {temp} && {{ {{ tee -- {temp}; echo \"{TEE_STATUS_PREFIX}$?\" >&3; }} | \
         if openssl version > /dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi; }} 3>&1"
    )
}

/// What a hashed run saw: the command's status and output, and what was sent.
struct HashedRun {
    exit_code: u32,
    stdout: String,
    stderr: String,
    sent: u64,
    /// The digest of what was sent; `None` when a digest known beforehand made hashing here
    /// unnecessary.
    sent_digest: Option<String>,
}

/// The line [`Session::stream_into`]'s command prints with the consumer's exit status.
const CONSUMER_STATUS_PREFIX: &str = "caph-upload-consumer ";

/// The server side of [`Session::stream_into`]: the consumer reads a FIFO in the background
/// (its output kept aside and shown on stderr at the end, so stdout carries only the report),
/// while `tee` copies stdin into the FIFO and on to the sha256 hasher, as in
/// [`write_and_hash_command`]. POSIX sh, so a rescue system's `sh` runs it.
fn stream_and_hash_command(consumer: &str) -> String {
    format!(
        "dir=$(mktemp -d) && mkfifo -m 600 \"$dir/stream\" || exit 1\n\
         ( {consumer} ) < \"$dir/stream\" > \"$dir/output\" 2>&1 &\n\
         consumer=$!\n\
         {{ {{ tee -- \"$dir/stream\"; echo \"{TEE_STATUS_PREFIX}$?\" >&3; }} | \
         if openssl version > /dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi; }} 3>&1\n\
         wait \"$consumer\"; echo \"{CONSUMER_STATUS_PREFIX}$?\"\n\
         cat \"$dir/output\" >&2; rm -rf \"$dir\""
    )
}

/// What the upload command printed: `tee`'s status and the digest of what it wrote.
#[derive(Debug, Default, PartialEq, Eq)]
struct WriteReport {
    tee_status: Option<u32>,
    /// Lowercase hex; `openssl dgst -r` prints `HEX *stdin`, `sha256sum` prints `HEX  -`.
    digest: Option<String>,
}

impl WriteReport {
    fn parse(stdout: &str) -> WriteReport {
        let mut report = WriteReport::default();
        for line in stdout.lines() {
            if let Some(status) = line.strip_prefix(TEE_STATUS_PREFIX) {
                report.tee_status = status.trim().parse().ok();
            } else if let Some(digest) = line.split_whitespace().next().and_then(Sha256Hex::parse) {
                report.digest = Some(digest.to_string());
            }
        }
        report
    }
}

/// The command as quoted in errors: its first line, cut at `MAX_COMMAND_IN_ERROR` characters.
fn short_command(command: &str) -> String {
    let first_line = command.lines().next().unwrap_or("");
    let mut short: String = first_line.chars().take(MAX_COMMAND_IN_ERROR).collect();
    if short.len() < command.len() {
        short.push_str("...");
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut seen = Vec::new();
        let mut buffer = LineBuffer::new(OutputStream::Stdout);
        let mut collect = |line: OutputLine<'_>| seen.push(line.text.to_owned());
        for chunk in chunks {
            buffer.push(chunk, &mut collect);
        }
        buffer.finish(&mut collect);
        seen
    }

    #[test]
    fn lines_are_split_across_chunks_and_the_partial_last_line_is_flushed() {
        assert_eq!(
            lines_of(&[b"one\ntw", b"o\r\nthr", b"ee"]),
            ["one", "two", "three"]
        );
        assert_eq!(lines_of(&[b"\n\n"]), ["", ""]);
        assert!(lines_of(&[b""]).is_empty());
    }

    #[test]
    fn endless_lines_are_cut() {
        let long = vec![b'x'; MAX_LINE_BYTES + 10];
        let lines = lines_of(&[&long]);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn the_upload_report_reads_both_hashers_and_the_tee_status() {
        let digest = "ab".repeat(32);
        let openssl = format!("{TEE_STATUS_PREFIX}0\n{digest} *stdin\n");
        assert_eq!(
            WriteReport::parse(&openssl),
            WriteReport {
                tee_status: Some(0),
                digest: Some(digest.clone())
            }
        );
        // The two lines come in either order; sha256sum's form and upper case are read too.
        let coreutils = format!("{}  -\n{TEE_STATUS_PREFIX}1\n", digest.to_uppercase());
        assert_eq!(
            WriteReport::parse(&coreutils),
            WriteReport {
                tee_status: Some(1),
                digest: Some(digest)
            }
        );
        assert_eq!(
            WriteReport::parse("nothing useful\n"),
            WriteReport::default()
        );
    }

    #[test]
    fn long_commands_are_shortened_in_errors() {
        assert_eq!(short_command("echo hi"), "echo hi");
        assert_eq!(short_command("set -e\necho hi"), "set -e...");
        assert_eq!(
            short_command(&"y".repeat(500)).len(),
            MAX_COMMAND_IN_ERROR + 3
        );
    }
}
