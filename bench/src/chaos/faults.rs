//! Runs a fault schedule against the cluster and its proxies, one fault at a time, healing each
//! before the next; counts what it injected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::cluster::Cluster;
use crate::proxy::Proxy;
use crate::schedule::{Fault, Kind};
use crate::workload::Shared;

/// Injects `faults` in order; stops early (everything healed) once `stop` is set. Returns the
/// count per kind of the faults injected.
pub async fn run(
    cluster: &mut Cluster,
    proxies: &[Proxy],
    faults: &[Fault],
    stop: &AtomicBool,
    shared: &Shared,
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
        let proxy = &proxies[f.node % proxies.len()];
        let redis_link = &cluster.redis_proxies[f.node % proxies.len()];
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
            Kind::RedisPause => {
                cluster.pause_redis(f.hold).await?;
                tokio::time::sleep(f.hold).await;
            }
            Kind::RedisLinkReset => redis_link.reset(),
            Kind::RedisLinkStall => {
                redis_link.set_stalled(true);
                tokio::time::sleep(f.hold).await;
                redis_link.set_stalled(false);
            }
            Kind::RedisLinkDelay => {
                redis_link.set_delay(f.delay);
                tokio::time::sleep(f.hold).await;
                redis_link.set_delay(std::time::Duration::ZERO);
            }
            Kind::ControlPlaneDown => {
                cluster.stop_control_plane().await;
                shared.control_plane_down.store(true, Ordering::Relaxed);
                let down = tokio::time::Instant::now();
                if f.node_restart {
                    // Started from its config cache alone: it must serve as before.
                    cluster.kill(f.node).await;
                    let addr = cluster.restart(f.node).await?;
                    proxy.retarget(addr);
                }
                tokio::time::sleep_until(down + f.hold).await;
                shared.control_plane_down.store(false, Ordering::Relaxed);
                cluster.start_control_plane().await?;
            }
            Kind::KeyRevocation => {
                cluster.rotate_key().await?;
                *shared.api_key.lock() = cluster.api_key.clone();
            }
            Kind::ClientRevocation => cluster.revoke_client(&format!("sub-{}", f.node)).await?,
        }
    }
    Ok(injected)
}
