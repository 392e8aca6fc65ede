//! The two halves of a connection's byte streams.
//!
//! [`SendStream`] holds what the application wrote and the peer has not yet
//! acknowledged; it accepts bytes only below the reader's credit (`limit`) and its own
//! window past the first unacknowledged byte, so its memory is bounded whatever credit
//! the peer grants. [`RecvStream`] reassembles what arrives,
//! grants credit (`consumed + window`), and keeps a timer per gap so missing ranges are
//! asked for again (receiver-driven loss recovery). It stores at most
//! [`MAX_OOO_SEGMENTS`] out-of-order segments and recomputes its gaps once per packet
//! ([`RecvStream::settle`]), so a peer sending many tiny pieces out of order costs
//! bounded memory and linear work. Both are plain data structures: no clock of their
//! own, no I/O.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Writer half: bytes `[una, written)` are buffered.
#[derive(Debug)]
pub struct SendStream {
    buf: VecDeque<u8>,
    /// Lowest offset not yet acknowledged (everything below is acked and dropped).
    una: u64,
    /// Offset of the next byte the application writes.
    written: u64,
    /// Offset of the first byte never sent.
    next_new: u64,
    /// Credit: bytes below this offset may be buffered and sent.
    limit: u64,
    /// Most bytes buffered past `una`, whatever the credit: the peer's credit is its
    /// word, not a bound on our memory.
    window: u64,
    /// The application shut the write side down: the stream ends at `written`.
    fin: bool,
    fin_sent: bool,
    fin_acked: bool,
    /// The FIN must go again (a probe while only the FIN is unacknowledged).
    fin_resend: bool,
    /// Ranges the reader asked for again, start → end, merged.
    retx: BTreeMap<u64, u64>,
    /// The reader's distinct-bytes-received counter, as last reported.
    peer_received: u64,
}

/// A piece of the stream ready to go into a STREAM frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: usize,
    pub fin: bool,
}

/// What an ACK changed for the writer.
#[derive(Debug, Default, Clone, Copy)]
pub struct AckOutcome {
    /// Stream bytes acknowledged for the first time (cumulatively).
    pub newly_acked: u64,
    /// Growth of the reader's received counter: bytes delivered since the last ACK.
    pub delivered: u64,
    /// Credit grew.
    pub credit_grew: bool,
    /// The FIN was acknowledged by this ACK.
    pub fin_acked: bool,
    /// Bytes the reader asked for again that were not already queued to go again:
    /// sent and lost (or, rarely, late). The rate model's loss signal.
    pub lost: u64,
}

impl AckOutcome {
    pub fn progress(&self) -> bool {
        self.newly_acked > 0 || self.delivered > 0 || self.credit_grew || self.fin_acked
    }
}

impl SendStream {
    pub fn new(initial_limit: u64, window: u64) -> Self {
        Self {
            buf: VecDeque::new(),
            una: 0,
            written: 0,
            next_new: 0,
            limit: initial_limit,
            window,
            fin: false,
            fin_sent: false,
            fin_acked: false,
            fin_resend: false,
            retx: BTreeMap::new(),
            peer_received: 0,
        }
    }

    /// Lets the buffer grow to `window` bytes past the first unacknowledged one (it
    /// never shrinks).
    pub fn grow_window(&mut self, window: u64) {
        self.window = self.window.max(window);
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Sets the credit granted in the handshake (for a stream created before it).
    pub fn set_initial_limit(&mut self, limit: u64) {
        self.limit = self.limit.max(limit);
    }

    /// Bytes the application may still write now.
    pub fn room(&self) -> u64 {
        if self.fin {
            0
        } else {
            self.limit
                .min(self.una.saturating_add(self.window))
                .saturating_sub(self.written)
        }
    }

    /// Buffered (unacknowledged or unsent) bytes.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn written(&self) -> u64 {
        self.written
    }
    pub fn una(&self) -> u64 {
        self.una
    }
    pub fn limit(&self) -> u64 {
        self.limit
    }
    pub fn next_new(&self) -> u64 {
        self.next_new
    }
    pub fn is_shutdown(&self) -> bool {
        self.fin
    }
    pub fn fin_acked(&self) -> bool {
        self.fin_acked
    }

    /// Takes as many bytes as the credit allows; returns how many.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = (self.room().min(data.len() as u64)) as usize;
        self.buf.extend(&data[..n]);
        self.written += n as u64;
        n
    }

    /// Half-close: the stream ends after the bytes written so far.
    pub fn shutdown(&mut self) {
        self.fin = true;
    }

    /// Everything written (and the FIN, if shut down) has been acknowledged.
    pub fn all_acked(&self) -> bool {
        self.una == self.written && (!self.fin || self.fin_acked)
    }

    /// Bytes sent and not known to be received: what the rate model counts in flight.
    pub fn in_flight(&self) -> u64 {
        self.next_new.saturating_sub(self.peer_received)
    }

    /// Something was sent and is not yet acknowledged.
    pub fn has_unacked(&self) -> bool {
        self.una < self.next_new || (self.fin_sent && !self.fin_acked)
    }

    /// New bytes (or the FIN alone) are waiting to be sent for the first time.
    pub fn has_new(&self) -> bool {
        self.next_new < self.written || (self.fin && !self.fin_sent)
    }

    pub fn has_retx(&self) -> bool {
        !self.retx.is_empty() || (self.fin_resend && self.fin_sent && !self.fin_acked)
    }

    /// Application data waits for credit.
    pub fn credit_blocked(&self) -> bool {
        !self.fin && self.written >= self.limit
    }

    /// Applies an ACK frame's stream fields.
    pub fn on_ack(
        &mut self,
        acked: u64,
        limit: u64,
        received: u64,
        fin: bool,
        want: &[(u64, u32)],
    ) -> AckOutcome {
        let mut out = AckOutcome::default();
        // Never past what was sent: a confused or lying peer cannot make us drop data.
        let acked = acked.min(self.next_new);
        if acked > self.una {
            let n = acked - self.una;
            self.buf.drain(..n as usize);
            self.una = acked;
            out.newly_acked = n;
            // Drop re-send requests below the new cumulative ack.
            while let Some((&s, &e)) = self.retx.first_key_value() {
                if s >= acked {
                    break;
                }
                self.retx.remove(&s);
                if e > acked {
                    self.retx.insert(acked, e);
                }
            }
        }
        if limit > self.limit {
            self.limit = limit;
            out.credit_grew = true;
        }
        let received = received.min(self.next_new);
        if received > self.peer_received {
            out.delivered = received - self.peer_received;
            self.peer_received = received;
        }
        if fin && self.fin && self.fin_sent && !self.fin_acked && self.una == self.written {
            self.fin_acked = true;
            out.fin_acked = true;
        }
        for &(s, l) in want {
            let s = s.max(self.una);
            let e = s.saturating_add(l as u64).min(self.next_new);
            if s < e {
                out.lost += self.add_retx(s, e);
            }
        }
        out
    }

    /// Queues `[s, e)` to go again; returns how many of its bytes were not queued yet.
    fn add_retx(&mut self, mut s: u64, mut e: u64) -> u64 {
        let mut queued = 0;
        if let Some((_, &pe)) = self.retx.range(..s).next_back() {
            queued += pe.min(e).saturating_sub(s);
        }
        for (&ns, &ne) in self.retx.range(s..e) {
            queued += ne.min(e) - ns;
        }
        let fresh = (e - s).saturating_sub(queued);
        // Merge with overlapping or adjacent ranges.
        if let Some((&ps, &pe)) = self.retx.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
                self.retx.remove(&ps);
            }
        }
        while let Some((&ns, &ne)) = self.retx.range(s..).next() {
            if ns > e {
                break;
            }
            e = e.max(ne);
            self.retx.remove(&ns);
        }
        self.retx.insert(s, e);
        fresh
    }

    /// Bytes of the stream at `[offset, offset + len)` appended to `out`.
    pub fn copy_out(&self, offset: u64, len: usize, out: &mut Vec<u8>) {
        let start = (offset - self.una) as usize;
        let (a, b) = self.buf.as_slices();
        let end = start + len;
        if end <= a.len() {
            out.extend_from_slice(&a[start..end]);
        } else if start >= a.len() {
            out.extend_from_slice(&b[start - a.len()..end - a.len()]);
        } else {
            out.extend_from_slice(&a[start..]);
            out.extend_from_slice(&b[..end - a.len()]);
        }
    }

    fn fin_at(&self, end: u64) -> bool {
        self.fin && end == self.written
    }

    /// Next requested re-send, at most `max` bytes.
    pub fn next_retx(&mut self, max: usize) -> Option<Segment> {
        loop {
            let Some((&s, &e)) = self.retx.first_key_value() else {
                if self.fin_resend && self.fin_sent && !self.fin_acked {
                    self.fin_resend = false;
                    return Some(Segment {
                        offset: self.written,
                        len: 0,
                        fin: true,
                    });
                }
                self.fin_resend = false;
                return None;
            };
            self.retx.remove(&s);
            let s = s.max(self.una);
            if s >= e {
                continue;
            }
            let len = ((e - s) as usize).min(max);
            if s + (len as u64) < e {
                self.retx.insert(s + len as u64, e);
            }
            let end = s + len as u64;
            let fin = self.fin_sent && self.fin_at(end);
            if fin {
                self.fin_resend = false;
            }
            return Some(Segment {
                offset: s,
                len,
                fin,
            });
        }
    }

    /// Queues a tail-loss probe: the last sent bytes (up to `max`) go again, with the
    /// FIN if it was sent, so the reader sees every gap before them.
    pub fn queue_probe(&mut self, max: usize) {
        if !self.has_unacked() {
            return;
        }
        let end = self.next_new;
        let start = end.saturating_sub(max as u64).max(self.una);
        if start < end {
            let _ = self.add_retx(start, end);
        }
        if self.fin_sent && !self.fin_acked {
            self.fin_resend = true;
        }
    }

    /// Everything sent and not acknowledged goes again (after the handshake turned out
    /// to have lost the packets that carried it).
    pub fn resend_all(&mut self) {
        if self.una < self.next_new {
            let _ = self.add_retx(self.una, self.next_new);
        }
        if self.fin_sent && !self.fin_acked {
            self.fin_resend = true;
        }
    }

    /// Next never-sent bytes (or a FIN alone), at most `max` bytes.
    pub fn next_new_segment(&mut self, max: usize) -> Option<Segment> {
        if !self.has_new() {
            return None;
        }
        let len = ((self.written - self.next_new) as usize).min(max);
        let seg = Segment {
            offset: self.next_new,
            len,
            fin: self.fin_at(self.next_new + len as u64),
        };
        self.next_new += len as u64;
        if seg.fin {
            self.fin_sent = true;
        }
        Some(seg)
    }
}

/// Most out-of-order segments a [`RecvStream`] holds. A piece that would need another
/// one is not stored: its range stays a gap, asked for again like a lost one. (Data
/// arriving in order after a hole extends the segment before it, so ordinary loss
/// needs one segment per hole.)
pub const MAX_OOO_SEGMENTS: usize = 4096;

/// A gap with its re-request timer.
#[derive(Debug, Clone, Copy)]
struct Gap {
    start: u64,
    end: u64,
    due: Instant,
    tries: u32,
    /// When it was last asked for.
    asked_at: Option<Instant>,
}

/// Why incoming stream data was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// Data beyond the final size, or two different final sizes.
    FinalSize,
}

/// Reader half.
#[derive(Debug)]
pub struct RecvStream {
    /// In-order bytes not yet read: `[consumed, acked)`.
    ready: VecDeque<u8>,
    consumed: u64,
    /// Every byte below this offset has arrived.
    acked: u64,
    /// Out-of-order segments above `acked`, non-overlapping, keyed by offset.
    ooo: BTreeMap<u64, Vec<u8>>,
    ooo_bytes: u64,
    highest: u64,
    final_size: Option<u64>,
    window: u64,
    /// Largest credit ever granted (never shrinks).
    limit: u64,
    /// Credit last told to the writer.
    advertised: u64,
    gaps: Vec<Gap>,
    /// `gaps` is out of date: data arrived since the last [`RecvStream::settle`].
    gaps_stale: bool,
    /// The application is gone: acknowledge and drop whatever arrives.
    discard: bool,
    /// Bytes dropped unread since `discard` was set (unread then, or arrived after).
    discarded: u64,
    /// When the gap that the latest data filled (in part) had been asked for, if it
    /// had been asked for exactly once: that data is most likely the answer, so the
    /// time since is a round trip through the writer (see `take_answered`).
    answered: Option<Instant>,
}

impl RecvStream {
    pub fn new(window: u64) -> Self {
        Self {
            ready: VecDeque::new(),
            consumed: 0,
            acked: 0,
            ooo: BTreeMap::new(),
            ooo_bytes: 0,
            highest: 0,
            final_size: None,
            window,
            limit: window,
            advertised: window,
            gaps: Vec::new(),
            gaps_stale: false,
            discard: false,
            discarded: 0,
            answered: None,
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }
    /// Bytes the application has read (or that were dropped for it).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }
    pub fn received(&self) -> u64 {
        self.acked + self.ooo_bytes
    }
    pub fn limit(&self) -> u64 {
        self.limit
    }
    /// Bytes held: unread in-order bytes plus out-of-order segments.
    pub fn buffered(&self) -> u64 {
        self.ready.len() as u64 + self.ooo_bytes
    }
    pub fn readable(&self) -> usize {
        self.ready.len()
    }
    /// The FIN and every byte before it have arrived.
    pub fn complete(&self) -> bool {
        self.final_size == Some(self.acked)
    }
    /// The application has read everything up to the FIN.
    pub fn at_eof(&self) -> bool {
        self.complete() && self.ready.is_empty()
    }

    /// Bytes dropped unread: those unread at [`RecvStream::set_discard`] and those
    /// that arrived after it.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Drops unread bytes and everything that arrives later (still acknowledged).
    pub fn set_discard(&mut self) {
        self.discard = true;
        self.discarded += self.ready.len() as u64;
        self.consumed += self.ready.len() as u64;
        self.ready.clear();
        self.grow_limit();
    }

    /// Grants `window` bytes of credit past what was read from now on (it never
    /// shrinks).
    pub fn grow_window(&mut self, window: u64) {
        if window > self.window {
            self.window = window;
            self.grow_limit();
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    fn grow_limit(&mut self) {
        self.limit = self.limit.max(self.consumed + self.window);
    }

    /// Marks the current credit as told to the writer.
    pub fn mark_advertised(&mut self) {
        self.advertised = self.limit;
    }

    /// Credit grew enough since the last ACK to be worth telling the writer now.
    pub fn credit_update_due(&self) -> bool {
        self.limit - self.advertised >= (self.window / 4).max(1)
    }

    /// Copies in-order bytes out; returns how many.
    pub fn read(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.ready.len());
        let (a, b) = self.ready.as_slices();
        if n <= a.len() {
            out[..n].copy_from_slice(&a[..n]);
        } else {
            out[..a.len()].copy_from_slice(a);
            out[a.len()..n].copy_from_slice(&b[..n - a.len()]);
        }
        self.consume(n);
        n
    }

    /// The readable bytes at the front, in place (for a reader that copies them
    /// straight to where they go); [`RecvStream::consume`] what it took.
    pub fn peek(&self) -> &[u8] {
        // The front slice is empty only when the whole deque is.
        self.ready.as_slices().0
    }

    /// Drops `n` read bytes and grants the writer credit for them.
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.ready.len());
        self.ready.drain(..n);
        self.consumed += n as u64;
        self.grow_limit();
    }

    /// Takes a STREAM frame. Returns whether the gap set may have changed (data arrived
    /// out of order or filled a hole); if so the gaps are brought up to date by the next
    /// [`RecvStream::settle`], which the caller makes after the packet's last frame.
    pub fn on_data(&mut self, offset: u64, data: &[u8], fin: bool) -> Result<bool, StreamError> {
        let end = offset + data.len() as u64;
        if fin {
            match self.final_size {
                Some(f) if f != end => return Err(StreamError::FinalSize),
                _ => {}
            }
            if end < self.highest {
                return Err(StreamError::FinalSize);
            }
            self.final_size = Some(end);
        }
        if let Some(f) = self.final_size {
            if end > f {
                return Err(StreamError::FinalSize);
            }
        }
        // Never store beyond the credit: that is what bounds the reader's memory.
        let end = end.min(self.limit);
        let before = (self.acked, self.ooo_bytes, self.highest);
        let was_highest = self.highest;
        self.highest = self.highest.max(end).max(if fin { end } else { 0 });
        let start = offset.max(self.acked);
        let gaps_before = !self.ooo.is_empty();
        if start < end {
            self.note_answer(start);
            let lo = (start - offset) as usize;
            let hi = (end - offset) as usize;
            self.insert(start, &data[lo..hi]);
        }
        let out_of_order = offset > self.acked || offset < was_highest || gaps_before;
        let changed = out_of_order || !self.ooo.is_empty() || self.highest > self.acked;
        // The gaps follow from `acked`, the segments and `highest`; a duplicate (or a
        // piece not stored) that moved none of them leaves them as they are.
        if changed && (self.acked, self.ooo_bytes, self.highest) != before {
            self.gaps_stale = true;
        }
        Ok(changed)
    }

    /// Recomputes the gaps if data arrived since the last call. Called once per packet
    /// after its frames: the walk over every segment and gap is then paid per packet,
    /// not per frame (a packet of thousands of 1-byte frames would make it quadratic).
    pub fn settle(&mut self, now: Instant, reorder_delay: Duration) {
        if self.gaps_stale {
            self.gaps_stale = false;
            self.update_gaps(now, reorder_delay);
        }
    }

    /// Data at `offset` arrived: if it falls in a gap asked for once, remember when.
    /// (`gaps` may lag by the packet's earlier frames; a gap they filled in part still
    /// holds the rest.)
    fn note_answer(&mut self, offset: u64) {
        let i = self.gaps.partition_point(|g| g.end <= offset);
        if let Some(g) = self.gaps.get(i) {
            if g.start <= offset && g.tries == 1 {
                self.answered = g.asked_at;
            }
        }
    }

    /// When the gap the latest data answered had been asked for (once), taken.
    pub fn take_answered(&mut self) -> Option<Instant> {
        self.answered.take()
    }

    fn insert(&mut self, start: u64, data: &[u8]) {
        let end = start + data.len() as u64;
        if start == self.acked {
            self.append_ready(data);
            self.pull_contiguous();
            return;
        }
        // Store the pieces of [start, end) not already held out of order.
        let mut cursor = start;
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        // A segment starting before `start` may cover its beginning.
        if let Some((&s, seg)) = self.ooo.range(..start).next_back() {
            cursor = cursor.max(s + seg.len() as u64);
        }
        for (&s, seg) in self.ooo.range(start..end) {
            if s > cursor {
                pieces.push((cursor, s));
            }
            cursor = cursor.max(s + seg.len() as u64);
        }
        if cursor < end {
            pieces.push((cursor, end));
        }
        for (s, e) in pieces {
            let piece = &data[(s - start) as usize..(e - start) as usize];
            // A piece that starts where a segment ends extends it (every piece but the
            // first does, and so does data arriving in order after a hole).
            if let Some((&ps, seg)) = self.ooo.range_mut(..s).next_back() {
                if ps + seg.len() as u64 == s {
                    seg.extend_from_slice(piece);
                    self.ooo_bytes += e - s;
                    continue;
                }
            }
            if self.ooo.len() >= MAX_OOO_SEGMENTS {
                // Not stored: the range stays a gap and is asked for again.
                continue;
            }
            self.ooo.insert(s, piece.to_vec());
            self.ooo_bytes += e - s;
        }
    }

    /// Out-of-order segments held.
    pub fn ooo_segments(&self) -> usize {
        self.ooo.len()
    }

    fn append_ready(&mut self, data: &[u8]) {
        if !self.discard {
            self.ready.extend(data);
        } else {
            self.consumed += data.len() as u64;
            self.discarded += data.len() as u64;
        }
        self.acked += data.len() as u64;
        if self.discard {
            self.grow_limit();
        }
    }

    fn pull_contiguous(&mut self) {
        while let Some((&s, _)) = self.ooo.first_key_value() {
            if s > self.acked {
                break;
            }
            let Some(seg) = self.ooo.remove(&s) else {
                break;
            };
            self.ooo_bytes -= seg.len() as u64;
            let end = s + seg.len() as u64;
            if end > self.acked {
                let skip = (self.acked - s) as usize;
                self.append_ready(&seg[skip..]);
            }
        }
    }

    /// Recomputes the holes in `[acked, highest)`, keeping the timers of holes already
    /// known and giving new ones a short reordering grace.
    fn update_gaps(&mut self, now: Instant, reorder_delay: Duration) {
        let mut holes: Vec<(u64, u64)> = Vec::new();
        let mut cursor = self.acked;
        for (&s, seg) in &self.ooo {
            if s > cursor {
                holes.push((cursor, s));
            }
            cursor = cursor.max(s + seg.len() as u64);
        }
        if cursor < self.highest {
            holes.push((cursor, self.highest));
        }
        let old = std::mem::take(&mut self.gaps);
        let mut j = 0;
        let fresh = now + reorder_delay;
        for (hs, he) in holes {
            let mut c = hs;
            while j < old.len() && old[j].end <= hs {
                j += 1;
            }
            let mut k = j;
            while k < old.len() && old[k].start < he {
                let g = old[k];
                let gs = g.start.max(hs);
                let ge = g.end.min(he);
                if gs > c {
                    self.gaps.push(Gap {
                        start: c,
                        end: gs,
                        due: fresh,
                        tries: 0,
                        asked_at: None,
                    });
                }
                if gs < ge {
                    self.gaps.push(Gap {
                        start: gs.max(c),
                        end: ge,
                        ..g
                    });
                }
                c = c.max(ge);
                k += 1;
            }
            if c < he {
                self.gaps.push(Gap {
                    start: c,
                    end: he,
                    due: fresh,
                    tries: 0,
                    asked_at: None,
                });
            }
        }
        self.gaps.retain(|g| g.start < g.end);
    }

    /// When the earliest gap is due to be asked for.
    pub fn next_gap_due(&self) -> Option<Instant> {
        debug_assert!(!self.gaps_stale, "settle() after on_data()");
        self.gaps.iter().map(|g| g.due).min()
    }

    /// Gaps due now, as (offset, length), with their timers pushed back by `retry`.
    /// (Not doubled per attempt: on a lossy path a range is lost again as often as the
    /// first time, and each doubling stalled the stream behind it. The caller backs
    /// `retry` off when nothing arrives at all.)
    pub fn due_wants(&mut self, now: Instant, retry: Duration, max: usize) -> Vec<(u64, u32)> {
        debug_assert!(!self.gaps_stale, "settle() after on_data()");
        let mut out = Vec::new();
        for g in &mut self.gaps {
            if out.len() >= max {
                break;
            }
            if g.due > now {
                continue;
            }
            let len = (g.end - g.start).min(u32::MAX as u64) as u32;
            out.push((g.start, len));
            g.due = now + retry;
            g.tries += 1;
            g.asked_at = Some(now);
        }
        out
    }

    pub fn gap_count(&self) -> usize {
        debug_assert!(!self.gaps_stale, "settle() after on_data()");
        self.gaps.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_respects_credit_and_acks() {
        let mut s = SendStream::new(10, u64::MAX);
        assert_eq!(s.write(b"hello world!"), 10);
        assert_eq!(s.room(), 0);
        assert!(s.credit_blocked());
        let seg = s.next_new_segment(4).unwrap();
        assert_eq!((seg.offset, seg.len, seg.fin), (0, 4, false));
        let seg = s.next_new_segment(100).unwrap();
        assert_eq!((seg.offset, seg.len), (4, 6));
        let mut out = Vec::new();
        s.copy_out(2, 5, &mut out);
        assert_eq!(out, b"llo w");
        let o = s.on_ack(4, 20, 6, false, &[(4, 3)]);
        assert_eq!((o.newly_acked, o.delivered, o.credit_grew), (4, 6, true));
        assert_eq!(s.buffered(), 6);
        assert_eq!(s.room(), 10);
        let r = s.next_retx(2).unwrap();
        assert_eq!((r.offset, r.len), (4, 2));
        let r = s.next_retx(10).unwrap();
        assert_eq!((r.offset, r.len), (6, 1));
        assert!(s.next_retx(10).is_none());
        s.shutdown();
        assert_eq!(s.room(), 0);
        let f = s.next_new_segment(10).unwrap();
        assert_eq!((f.offset, f.len, f.fin), (10, 0, true));
        assert!(!s.all_acked());
        let o = s.on_ack(10, 20, 10, true, &[]);
        assert!(o.fin_acked && s.all_acked());
        // Acks beyond what was sent are clamped.
        let mut s = SendStream::new(100, u64::MAX);
        s.write(&[1; 50]);
        s.next_new_segment(20);
        s.on_ack(50, 100, 50, false, &[]);
        assert_eq!(s.una(), 20);
    }

    #[test]
    fn recv_reassembles_and_tracks_gaps() {
        let t = Instant::now();
        let d = Duration::from_millis(1);
        let mut r = RecvStream::new(100);
        r.on_data(10, b"klmno", false).unwrap();
        r.settle(t, d);
        assert_eq!(r.readable(), 0);
        assert_eq!(r.received(), 5);
        assert_eq!(r.gap_count(), 1);
        assert!(r.due_wants(t, d * 8, 8).is_empty());
        let w = r.due_wants(t + d, d * 8, 8);
        assert_eq!(w, vec![(0, 10)]);
        r.on_data(0, b"abcd", false).unwrap();
        r.settle(t, d);
        // The old gap keeps its (backed-off) timer for what is still missing.
        assert_eq!(r.gap_count(), 1);
        assert!(r.next_gap_due().unwrap() > t + d);
        r.on_data(3, b"defghijk", false).unwrap();
        r.settle(t, d);
        assert_eq!(r.acked(), 15);
        assert_eq!(r.gap_count(), 0);
        let mut buf = [0u8; 32];
        let n = r.read(&mut buf);
        assert_eq!(&buf[..n], b"abcdefghijklmno");
        assert_eq!(r.limit(), 115);
        r.on_data(15, b"p", true).unwrap();
        assert!(r.complete());
        assert_eq!(r.on_data(15, b"pq", true), Err(StreamError::FinalSize));
        assert_eq!(r.on_data(16, b"q", false), Err(StreamError::FinalSize));
        assert_eq!(r.read(&mut buf), 1);
        assert!(r.at_eof());
    }

    #[test]
    fn recv_never_stores_beyond_credit() {
        let mut r = RecvStream::new(10);
        r.on_data(5, &[1; 20], false).unwrap();
        assert_eq!(r.buffered(), 5);
        r.on_data(0, &[1; 20], false).unwrap();
        assert_eq!(r.buffered(), 10);
        assert_eq!(r.acked(), 10);
    }

    #[test]
    fn overlapping_segments_count_once() {
        let mut r = RecvStream::new(1000);
        r.on_data(100, &[1; 50], false).unwrap();
        r.on_data(120, &[1; 50], false).unwrap();
        r.on_data(90, &[1; 100], false).unwrap();
        assert_eq!(r.received(), 100);
        r.on_data(0, &[1; 95], false).unwrap();
        assert_eq!(r.acked(), 190);
        assert_eq!(r.received(), 190);
        assert_eq!(r.buffered(), 190);
    }

    #[test]
    fn adjacent_pieces_share_a_segment() {
        let t = Instant::now();
        let d = Duration::from_millis(1);
        let mut r = RecvStream::new(1000);
        for i in 0..10u64 {
            r.on_data(100 + 10 * i, &[i as u8; 10], false).unwrap();
        }
        r.settle(t, d);
        assert_eq!(r.ooo_segments(), 1);
        assert_eq!(r.gap_count(), 1);
        // One frame over three holes: the pieces after the first extend the
        // segments they follow; only the first needs a segment of its own.
        r.on_data(300, &[1; 10], false).unwrap();
        r.on_data(50, &[2; 300], false).unwrap();
        r.settle(t, d);
        assert_eq!(r.ooo_segments(), 3);
        assert_eq!(r.received(), 300);
        r.on_data(0, &[3; 50], false).unwrap();
        r.settle(t, d);
        assert_eq!((r.acked(), r.ooo_segments(), r.gap_count()), (350, 0, 0));
        let mut buf = [0u8; 400];
        assert_eq!(r.read(&mut buf), 350);
        assert_eq!(&buf[95..105], &[2, 2, 2, 2, 2, 0, 0, 0, 0, 0]);
        assert_eq!(&buf[195..205], &[9, 9, 9, 9, 9, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn out_of_order_segments_are_capped() {
        let t = Instant::now();
        let d = Duration::from_millis(1);
        let n = MAX_OOO_SEGMENTS as u64 + 1000;
        let mut r = RecvStream::new(1 << 20);
        for i in 0..n {
            r.on_data(1 + 2 * i, &[(1 + 2 * i) as u8], false).unwrap();
        }
        r.settle(t, d);
        assert_eq!(r.ooo_segments(), MAX_OOO_SEGMENTS);
        assert_eq!(r.buffered(), MAX_OOO_SEGMENTS as u64);
        // What was not stored is a gap like any other: one tail gap past the last
        // segment, up to the highest offset seen.
        assert_eq!(r.gap_count(), MAX_OOO_SEGMENTS + 1);
        let w = r.due_wants(t + d, d, usize::MAX);
        assert_eq!(w.last(), Some(&(2 * MAX_OOO_SEGMENTS as u64, 2 * 1000)));
        // A duplicate, or a piece beyond the cap below the highest offset, changes
        // nothing: no walk over the segments for it.
        let o = 2 * MAX_OOO_SEGMENTS as u64 + 1;
        assert!(r.on_data(1, &[1], false).unwrap());
        assert!(r.on_data(o, &[o as u8], false).unwrap());
        assert!(!r.gaps_stale);
        // The writer sends everything again, in order: the stream is whole.
        let all: Vec<u8> = (0..2 * n).map(|o| o as u8).collect();
        r.on_data(0, &all, false).unwrap();
        r.settle(t, d);
        assert_eq!((r.acked(), r.ooo_segments(), r.gap_count()), (2 * n, 0, 0));
        let mut buf = vec![0u8; all.len()];
        assert_eq!(r.read(&mut buf), all.len());
        assert_eq!(buf, all);
    }
}
