//! A pair's two relay ports, from the configured range: pair slot `n` owns the `n`-th two
//! consecutive ports (peer A's first), so a port names its pair and side without a lookup
//! table, and the kernel's port map is only the fast path's copy of this arithmetic. Slots are
//! handed out at random among the free ones: a new pair's ports are not the next ones after
//! the last pair's (they are not secret either — docs/security.md assumes an attacker knows
//! them — but there is no reason to make them obvious).

use std::ops::RangeInclusive;

use rand::Rng;

use super::legs::Side;

/// The range's pairs of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortPairs {
    first: u16,
    pairs: u32,
}

impl PortPairs {
    /// The pairs of `range` (an odd last port stays unused); `None` when it holds no pair.
    pub fn new(range: RangeInclusive<u16>) -> Option<PortPairs> {
        let len = u32::from(*range.end()).checked_sub(u32::from(*range.start()))? + 1;
        (len >= 2).then(|| PortPairs {
            first: *range.start(),
            pairs: len / 2,
        })
    }

    /// How many pairs the range holds.
    pub fn count(&self) -> u32 {
        self.pairs
    }

    /// The ports of pair `slot`: peer A's, peer B's.
    pub fn ports(&self, slot: u32) -> [u16; 2] {
        debug_assert!(slot < self.pairs);
        let a = u32::from(self.first) + 2 * slot;
        [a as u16, (a + 1) as u16]
    }

    /// The pair and side a port belongs to.
    pub fn owner(&self, port: u16) -> Option<(u32, Side)> {
        let offset = u32::from(port).checked_sub(u32::from(self.first))?;
        let slot = offset / 2;
        (slot < self.pairs).then_some((slot, if offset % 2 == 0 { Side::A } else { Side::B }))
    }
}

/// Free pair slots.
#[derive(Clone, Debug)]
pub struct SlotPool {
    free: Vec<u32>,
}

impl SlotPool {
    /// Slots `0..count`, all free.
    pub fn new(count: u32) -> SlotPool {
        SlotPool {
            free: (0..count).collect(),
        }
    }

    /// Takes a free slot at random; `None` when all are in use.
    pub fn take(&mut self, rng: &mut impl Rng) -> Option<u32> {
        if self.free.is_empty() {
            return None;
        }
        let i = rng.random_range(0..self.free.len());
        Some(self.free.swap_remove(i))
    }

    /// Takes a particular slot (a pair adopted after a restart); whether it was free.
    pub fn claim(&mut self, slot: u32) -> bool {
        match self.free.iter().position(|&s| s == slot) {
            Some(i) => {
                self.free.swap_remove(i);
                true
            }
            None => false,
        }
    }

    /// Gives a slot back.
    pub fn give(&mut self, slot: u32) {
        debug_assert!(!self.free.contains(&slot));
        self.free.push(slot);
    }

    /// Free slots left.
    pub fn available(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn each_port_names_one_pair_and_side() {
        let pairs = PortPairs::new(52_000..=52_009).unwrap();
        assert_eq!(pairs.count(), 5);
        for slot in 0..5 {
            let [a, b] = pairs.ports(slot);
            assert_eq!(
                (b, pairs.owner(a), pairs.owner(b)),
                (a + 1, Some((slot, Side::A)), Some((slot, Side::B)))
            );
        }
        assert_eq!(pairs.owner(51_999), None);
        assert_eq!(pairs.owner(52_010), None);
        // An odd last port stays unused; a range too small holds nothing.
        let odd = PortPairs::new(52_000..=52_004).unwrap();
        assert_eq!((odd.count(), odd.owner(52_004)), (2, None));
        assert_eq!(PortPairs::new(52_000..=52_000), None);
        #[allow(clippy::reversed_empty_ranges)] // a misconfigured range, on purpose
        let reversed = 52_001..=52_000;
        assert_eq!(PortPairs::new(reversed), None);
        let top = PortPairs::new(65_534..=65_535).unwrap();
        assert_eq!(top.ports(0), [65_534, 65_535]);
    }

    #[test]
    fn slots_are_taken_at_random_once_each_and_given_back() {
        let mut pool = SlotPool::new(50);
        let mut rng = rand::rng();
        let taken: Vec<u32> = (0..50).map(|_| pool.take(&mut rng).unwrap()).collect();
        assert_eq!(taken.iter().collect::<HashSet<_>>().len(), 50);
        assert_ne!(taken, (0..50).collect::<Vec<_>>(), "not in order");
        assert_eq!(pool.take(&mut rng), None);
        pool.give(7);
        assert!(!pool.claim(8));
        assert!(pool.claim(7));
        assert_eq!(pool.available(), 0);
    }
}
