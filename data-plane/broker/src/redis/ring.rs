//! The consistent-hash ring that spreads hash tags (channels, tenants, apps) over several Redis
//! URLs, identically on every node.

/// Virtual nodes per Redis URL on the hash ring.
const VIRTUAL_NODES: usize = 160;

/// A hash that every node and every Rust release computes identically (unlike `std`'s):
/// FNV-1a, finished with SplitMix64 for a good spread of similar keys over the ring.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard index the ring assigns to a hash tag.
pub(crate) fn ring_pick(ring: &[(u64, usize)], tag: &str) -> usize {
    let point = stable_hash(tag.as_bytes());
    ring[ring.partition_point(|(p, _)| *p < point) % ring.len()].1
}

pub(crate) fn build_ring(urls: &[String]) -> Vec<(u64, usize)> {
    let mut ring: Vec<(u64, usize)> = urls
        .iter()
        .enumerate()
        .flat_map(|(index, url)| (0..VIRTUAL_NODES).map(move |v| (stable_hash(format!("{url}#{v}").as_bytes()), index)))
        .collect();
    ring.sort_unstable();
    ring
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_spreads_channels_and_moves_few_when_a_shard_is_added() {
        let two: Vec<String> = vec!["redis://a".into(), "redis://b".into()];
        let three: Vec<String> = vec!["redis://a".into(), "redis://b".into(), "redis://c".into()];
        let (ring2, ring3) = (build_ring(&two), build_ring(&three));
        let pick = ring_pick;
        let keys: Vec<String> = (0..3_000).map(|i| format!("{{app|room-{i}}}")).collect();
        let on_b = keys.iter().filter(|k| pick(&ring2, k) == 1).count();
        assert!((1_000..2_000).contains(&on_b), "two shards share the channels: {on_b} of 3000 on b");
        let moved = keys.iter().filter(|k| pick(&ring2, k) != pick(&ring3, k)).count();
        let moved_elsewhere =
            keys.iter().filter(|k| pick(&ring2, k) != pick(&ring3, k) && pick(&ring3, k) != 2).count();
        assert_eq!(moved_elsewhere, 0, "adding a shard only moves channels onto it");
        assert!(moved < 1_600, "about a third moves, not most: {moved}");
    }
}
