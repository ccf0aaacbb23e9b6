//! A range of addresses and which of them are taken, as a bitmap with a
//! round-robin cursor: finding a free address looks at 64 addresses per
//! step and never scans the leases.

use std::net::Ipv4Addr;

/// Largest range a pool covers (a /8).
pub const MAX_RANGE: u32 = 1 << 24;

/// Free/used state of a contiguous address range.
#[derive(Debug, Clone)]
pub struct Pool {
    start: u32,
    len: u32,
    used: Vec<u64>,
    cursor: u32,
}

impl Pool {
    /// A pool of `start..=end` (clamped to [`MAX_RANGE`] addresses), all free.
    pub fn new(start: Ipv4Addr, end: Ipv4Addr) -> Pool {
        let (s, e) = (u32::from(start), u32::from(end));
        let len = if e < s { 0 } else { (e - s).saturating_add(1).min(MAX_RANGE) };
        Pool { start: s, len, used: vec![0; len.div_ceil(64) as usize], cursor: 0 }
    }

    fn index(&self, ip: Ipv4Addr) -> Option<u32> {
        let i = u32::from(ip).checked_sub(self.start)?;
        (i < self.len).then_some(i)
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.index(ip).is_some()
    }

    /// Marks `ip` taken (no-op outside the range).
    pub fn take(&mut self, ip: Ipv4Addr) {
        if let Some(i) = self.index(ip) {
            self.used[(i / 64) as usize] |= 1 << (i % 64);
        }
    }

    /// Marks `ip` free again.
    pub fn free(&mut self, ip: Ipv4Addr) {
        if let Some(i) = self.index(ip) {
            self.used[(i / 64) as usize] &= !(1 << (i % 64));
        }
    }

    /// Whether `ip` is in the range and free.
    pub fn is_free(&self, ip: Ipv4Addr) -> bool {
        self.index(ip).is_some_and(|i| self.used[(i / 64) as usize] & (1 << (i % 64)) == 0)
    }

    /// The next free address after the cursor, wrapping around; spreads
    /// allocations so a just-released address is not reused at once.
    pub fn next_free(&mut self) -> Option<Ipv4Addr> {
        if self.len == 0 {
            return None;
        }
        let words = self.used.len() as u32;
        let mut i = self.cursor % self.len;
        for _ in 0..=words {
            let w = (i / 64) as usize;
            // Bits below `i` in this word were visited on an earlier pass.
            let mask = !0u64 << (i % 64);
            let free = !self.used[w] & mask;
            if free != 0 {
                let idx = (w as u32) * 64 + free.trailing_zeros();
                if idx < self.len {
                    self.cursor = idx + 1;
                    return Some(Ipv4Addr::from(self.start + idx));
                }
            }
            i = ((w as u32 + 1) * 64) % (words * 64);
            if i >= self.len {
                i = 0;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_every_address_once_then_runs_dry() {
        let mut p = Pool::new(Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 209));
        let mut seen = std::collections::HashSet::new();
        while let Some(ip) = p.next_free() {
            assert!(p.contains(ip));
            assert!(seen.insert(ip), "{ip} twice");
            p.take(ip);
        }
        assert_eq!(seen.len(), 200);
        p.free(Ipv4Addr::new(10, 0, 0, 77));
        assert_eq!(p.next_free(), Some(Ipv4Addr::new(10, 0, 0, 77)));
    }

    #[test]
    fn skips_taken_addresses_and_moves_on() {
        let mut p = Pool::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 3));
        p.take(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.next_free(), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(p.next_free(), Some(Ipv4Addr::new(10, 0, 0, 3)), "round robin, not first-free");
        assert!(!p.is_free(Ipv4Addr::new(10, 0, 0, 9)), "outside the range is never free");
        assert_eq!(Pool::new(Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::new(10, 0, 0, 4)).next_free(), None);
    }
}
