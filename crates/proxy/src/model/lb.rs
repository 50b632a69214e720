//! Load balancing over one priority's hosts: round robin (smooth weighted
//! schedule), least request (power of two choices), random, ring hash and
//! Maglev. Tables are built once per host set; picking takes one atomic add
//! or one random number and never allocates.

use super::cluster::Host;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest { choices: u32 },
    Random,
    RingHash { min_ring: u64, max_ring: u64 },
    Maglev { table_size: u64 },
}

/// Hosts of one priority with the tables their policy needs.
#[derive(Debug)]
pub struct PriorityHosts {
    pub hosts: Vec<Arc<Host>>,
    /// Host indexes in smooth weighted round-robin order.
    schedule: Vec<u32>,
    /// (hash, host index), sorted by hash.
    ring: Vec<(u64, u32)>,
    maglev: Vec<u32>,
    next: AtomicUsize,
}

impl PriorityHosts {
    pub fn new(hosts: Vec<Arc<Host>>, policy: LbPolicy) -> Self {
        let schedule = smooth_schedule(&hosts);
        let ring = match policy {
            LbPolicy::RingHash { min_ring, max_ring } => build_ring(&hosts, min_ring, max_ring),
            _ => Vec::new(),
        };
        let maglev = match policy {
            LbPolicy::Maglev { table_size } => build_maglev(&hosts, table_size),
            _ => Vec::new(),
        };
        PriorityHosts {
            hosts,
            schedule,
            ring,
            maglev,
            next: AtomicUsize::new(fastrand::usize(..1024)),
        }
    }

    /// Round robin over every host, healthy or not (panic mode).
    pub fn pick_panic(&self) -> Option<&Arc<Host>> {
        let len = self.schedule.len();
        (len > 0).then(|| {
            &self.hosts[self.schedule[self.next.fetch_add(1, Ordering::Relaxed) % len] as usize]
        })
    }

    pub fn any_available(&self, now_ms: u64) -> bool {
        self.hosts.iter().any(|h| h.available(now_ms))
    }

    /// Picks a host; `hash` is used by the hash-based policies.
    pub fn pick(&self, policy: LbPolicy, hash: Option<u64>, now_ms: u64) -> Option<&Arc<Host>> {
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        match (policy, hash) {
            (LbPolicy::RoundRobin, _) => {
                let len = self.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|i| &self.hosts[self.schedule[(start + i) % len] as usize])
                    .find(|h| h.available(now_ms))
            }
            (LbPolicy::LeastRequest { choices }, _) => {
                let mut best: Option<&Arc<Host>> = None;
                for _ in 0..choices.max(2) {
                    let h =
                        &self.hosts[self.schedule[fastrand::usize(..self.schedule.len())] as usize];
                    if !h.available(now_ms) {
                        continue;
                    }
                    if best.is_none_or(|b| h.active_requests() < b.active_requests()) {
                        best = Some(h);
                    }
                }
                best.or_else(|| self.first_available(fastrand::usize(..n), now_ms))
            }
            (LbPolicy::RingHash { .. }, Some(hash)) if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|&(h, _)| h < hash);
                let len = self.ring.len();
                (0..len)
                    .map(|i| &self.hosts[self.ring[(start + i) % len].1 as usize])
                    .find(|h| h.available(now_ms))
            }
            (LbPolicy::Maglev { .. }, Some(hash)) if !self.maglev.is_empty() => {
                let i = self.maglev[(hash % self.maglev.len() as u64) as usize] as usize;
                self.first_available(i, now_ms)
            }
            _ => {
                let i = self.schedule[fastrand::usize(..self.schedule.len())] as usize;
                self.first_available(i, now_ms)
            }
        }
    }

    /// A pick that skips the hosts in `avoid` (a retry's previous hosts):
    /// hash policies walk on from the hash's position, the others take
    /// their next (round robin) or a random start. None when every
    /// available host is to be avoided.
    pub fn pick_avoiding(
        &self,
        policy: LbPolicy,
        hash: Option<u64>,
        now_ms: u64,
        avoid: &[std::net::SocketAddr],
    ) -> Option<&Arc<Host>> {
        let ok = |h: &&Arc<Host>| h.available(now_ms) && !avoid.contains(&h.address);
        let n = self.hosts.len();
        if n == 0 {
            return None;
        }
        match (policy, hash) {
            (LbPolicy::RingHash { .. }, Some(hash)) if !self.ring.is_empty() => {
                let start = self.ring.partition_point(|&(h, _)| h < hash);
                let len = self.ring.len();
                (0..len)
                    .map(|i| &self.hosts[self.ring[(start + i) % len].1 as usize])
                    .find(ok)
            }
            (LbPolicy::Maglev { .. }, Some(hash)) if !self.maglev.is_empty() => {
                let start = self.maglev[(hash % self.maglev.len() as u64) as usize] as usize;
                (0..n).map(|i| &self.hosts[(start + i) % n]).find(ok)
            }
            (LbPolicy::RoundRobin, _) => {
                let len = self.schedule.len();
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|i| &self.hosts[self.schedule[(start + i) % len] as usize])
                    .find(ok)
            }
            _ => {
                let start = fastrand::usize(..n);
                (0..n).map(|i| &self.hosts[(start + i) % n]).find(ok)
            }
        }
    }

    fn first_available(&self, start: usize, now_ms: u64) -> Option<&Arc<Host>> {
        let n = self.hosts.len();
        (0..n)
            .map(|i| &self.hosts[(start + i) % n])
            .find(|h| h.available(now_ms))
    }
}

/// Nginx's smooth weighted round robin, unrolled into a schedule.
fn smooth_schedule(hosts: &[Arc<Host>]) -> Vec<u32> {
    let mut weights: Vec<i64> = hosts.iter().map(|h| h.weight.max(1) as i64).collect();
    let g = weights.iter().fold(0, |a, &b| gcd(a, b)).max(1);
    for w in &mut weights {
        *w /= g;
    }
    let total: i64 = weights.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    // Cap the schedule; very large weight sums fall back to proportional order.
    let len = total.min(4096) as usize;
    let mut current = vec![0i64; hosts.len()];
    let mut out = Vec::with_capacity(len);
    for _ in 0..len {
        let mut best = 0;
        for i in 0..hosts.len() {
            current[i] += weights[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// FNV-1a, 64 bits: stable across runs and processes.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // Final avalanche so nearby keys spread over the ring.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

fn build_ring(hosts: &[Arc<Host>], min_ring: u64, max_ring: u64) -> Vec<(u64, u32)> {
    let total: u64 = hosts.iter().map(|h| h.weight.max(1) as u64).sum();
    let min_w = hosts
        .iter()
        .map(|h| h.weight.max(1) as u64)
        .min()
        .unwrap_or(1);
    // Enough entries that the lightest host gets at least one, within bounds.
    let size = (total / min_w).max(min_ring).min(max_ring.max(1));
    let mut ring = Vec::with_capacity(size as usize + hosts.len());
    for (i, h) in hosts.iter().enumerate() {
        let n = ((h.weight.max(1) as u64 * size) / total).max(1);
        for k in 0..n {
            let key = format!("{}_{k}", h.address);
            ring.push((hash_bytes(key.as_bytes()), i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

fn build_maglev(hosts: &[Arc<Host>], table_size: u64) -> Vec<u32> {
    let m = table_size as usize;
    let n = hosts.len();
    let perms: Vec<(usize, usize)> = hosts
        .iter()
        .map(|h| {
            let name = h.address.to_string();
            let offset = (hash_bytes(name.as_bytes()) % m as u64) as usize;
            let skip =
                (hash_bytes(format!("{name}#skip").as_bytes()) % (m as u64 - 1)) as usize + 1;
            (offset, skip)
        })
        .collect();
    let weights: Vec<f64> = hosts.iter().map(|h| h.weight.max(1) as f64).collect();
    let max_w = weights.iter().cloned().fold(1.0, f64::max);
    let mut next = vec![0usize; n];
    let mut credit = vec![0f64; n];
    let mut table = vec![u32::MAX; m];
    let mut filled = 0;
    while filled < m {
        for i in 0..n {
            credit[i] += weights[i] / max_w;
            if credit[i] < 1.0 {
                continue;
            }
            credit[i] -= 1.0;
            let (offset, skip) = perms[i];
            loop {
                let c = (offset + next[i] * skip) % m;
                next[i] += 1;
                if table[c] == u32::MAX {
                    table[c] = i as u32;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(weights: &[u32]) -> Vec<Arc<Host>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                Arc::new(Host::new(
                    format!("10.0.0.{}:80", i + 1).parse().expect("addr"),
                    *w,
                    true,
                ))
            })
            .collect()
    }

    fn counts(p: &PriorityHosts, policy: LbPolicy, n: u64, hashed: bool) -> Vec<usize> {
        let mut c = vec![0; p.hosts.len()];
        for i in 0..n {
            let h = p
                .pick(policy, hashed.then(|| hash_bytes(&i.to_le_bytes())), 0)
                .expect("a host");
            c[p.hosts
                .iter()
                .position(|x| Arc::ptr_eq(x, h))
                .expect("known")] += 1;
        }
        c
    }

    #[test]
    fn weighted_round_robin_follows_weights_exactly() {
        let p = PriorityHosts::new(hosts(&[1, 2, 3]), LbPolicy::RoundRobin);
        assert_eq!(
            counts(&p, LbPolicy::RoundRobin, 600, false),
            [100, 200, 300]
        );
    }

    #[test]
    fn maglev_and_ring_spread_keys_by_weight_and_stay_stable() {
        for policy in [
            LbPolicy::Maglev { table_size: 65537 },
            LbPolicy::RingHash {
                min_ring: 1024,
                max_ring: 1 << 20,
            },
        ] {
            let p = PriorityHosts::new(hosts(&[1, 1, 2]), policy);
            let c = counts(&p, policy, 40_000, true);
            // Weight 2 gets about half of the keys; each weight-1 host about a quarter.
            assert!((16_000..24_000).contains(&c[2]), "{policy:?}: {c:?}");
            assert!(
                (7_000..13_000).contains(&c[0]) && (7_000..13_000).contains(&c[1]),
                "{policy:?}: {c:?}"
            );
            let k = Some(hash_bytes(b"user-42"));
            let first = p.pick(policy, k, 0).expect("host").address;
            assert!((0..10).all(|_| p.pick(policy, k, 0).expect("host").address == first));
        }
    }

    #[test]
    fn least_request_prefers_the_idle_host() {
        let hs = hosts(&[1, 1]);
        for _ in 0..50 {
            hs[0].begin();
        }
        let p = PriorityHosts::new(hs, LbPolicy::LeastRequest { choices: 2 });
        let c = counts(&p, LbPolicy::LeastRequest { choices: 2 }, 1000, false);
        // Two random choices pick the busy host only when both draws hit it.
        assert!(c[1] > c[0] * 2, "{c:?}");
    }
}
