//! Runs a fault schedule against the cluster and its proxies, one fault at a time, healing each
//! before the next; counts what it injected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cluster::Cluster;
use crate::proxy::Proxy;
use crate::schedule::{Fault, Kind};

/// Injects `faults` in order; stops early (everything healed) once `stop` is set. Returns the
/// count per kind of the faults injected.
pub async fn run(
    cluster: &mut Cluster,
    proxies: &[Proxy],
    faults: &[Fault],
    stop: &AtomicBool,
) -> anyhow::Result<BTreeMap<Kind, u32>> {
    let mut injected = BTreeMap::new();
    for f in faults {
        tokio::time::sleep(f.after).await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(crash) = cluster.crashed() {
            anyhow::bail!("{crash}");
        }
        *injected.entry(f.kind).or_insert(0) += 1;
        let proxy = &proxies[f.node];
        match f.kind {
            Kind::KillRestart => {
                cluster.kill(f.node).await;
                tokio::time::sleep(f.hold).await;
                let addr = cluster.restart(f.node).await?;
                proxy.retarget(addr);
            }
            Kind::Freeze => {
                cluster.freeze(f.node);
                tokio::time::sleep(f.hold).await;
                cluster.thaw(f.node);
            }
            Kind::ProxyReset => proxy.reset(),
            Kind::RedisRestart => cluster.restart_redis(f.hold).await?,
            Kind::ProxyStall => {
                proxy.set_stalled(true);
                tokio::time::sleep(f.hold).await;
                proxy.set_stalled(false);
            }
            Kind::ProxyDelay => {
                proxy.set_delay(f.delay);
                tokio::time::sleep(f.hold).await;
                proxy.set_delay(std::time::Duration::ZERO);
            }
        }
    }
    Ok(injected)
}
