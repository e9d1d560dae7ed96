//! The floor under scenario 2 on this machine: what a fan-out costs with no server at all.
//!
//! One process accepts `--subscribers` loopback TCP connections and, `--rate` times a second,
//! writes one pre-built 80-byte record (a WebSocket text frame's size in the fan-out scenario)
//! to every one of them with a plain blocking `write`: no framing, no queue, no runtime, no
//! allocation. A child process holds the other ends and reads them with one `epoll` loop (the
//! leanest possible load generator) and measures each record's age from the monotonic stamp in
//! it. Whatever latency this shows, no server on the same two cores can beat without writing
//! fewer times per delivery.
//!
//! ```sh
//! cargo run --release -p aviary-bench --example loopback_floor -- --subscribers 10000 --rate 50 --seconds 10
//! ```
//!
//! Only 127.0.0.1; bounded by `--seconds` plus a 10 s drain.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

const RECORD: usize = 80;

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: as above; CLOCK_THREAD_CPUTIME_ID reads the calling thread's CPU time.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn arg(args: &[String], name: &str, default: u64) -> anyhow::Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args.get(i + 1).context("missing value")?.parse().with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--reader") {
        let port: u16 = args.get(i + 1).context("--reader PORT")?.parse()?;
        return reader(port, arg(&args, "--subscribers", 10_000)? as usize, arg(&args, "--expect", 0)?);
    }
    let subscribers = arg(&args, "--subscribers", 10_000)? as usize;
    let rate = arg(&args, "--rate", 50)?.max(1);
    let seconds = arg(&args, "--seconds", 10)?;
    // Publications per write: 1 writes each publication on its own; K waits for K of them and
    // writes them in one go (what a server's per-connection queue does once it falls behind).
    let batch = arg(&args, "--batch", 1)?.max(1);
    let sweeps = rate * seconds / batch;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let child = Command::new(std::env::current_exe()?)
        .args(["--reader", &port.to_string(), "--subscribers", &subscribers.to_string()])
        .args(["--expect", &(sweeps * batch * subscribers as u64).to_string()])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut socks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    // Let the reader reach its loop.
    std::thread::sleep(Duration::from_millis(500));

    let mut records = vec![0u8; RECORD * batch as usize];
    let mut sweep_us = Histogram::<u64>::new(3)?;
    let cpu_before = thread_cpu();
    let started = Instant::now();
    let started_ns = monotonic_ns();
    for k in 0..sweeps {
        // Publication j is due at j / rate; a sweep goes out when the last of its batch is due,
        // and each record carries its own publication's due time.
        let last = (k + 1) * batch - 1;
        let due = started + Duration::from_secs_f64(last as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        for (j, rec) in records.chunks_mut(RECORD).enumerate() {
            let published = started_ns + ((k * batch + j as u64) * 1_000_000_000 / rate);
            rec[..8].copy_from_slice(&published.to_le_bytes());
        }
        for s in &mut socks {
            s.write_all(&records)?;
        }
        sweep_us.record(t.elapsed().as_micros() as u64)?;
    }
    let wall = started.elapsed();
    let writer_cpu = thread_cpu() - cpu_before;
    let out = child.wait_with_output()?;
    let writes = sweeps * subscribers as u64;
    println!(
        "subscribers {subscribers}, {rate} publications/s for {seconds} s, {batch} per write: {writes} writes ({} deliveries) in {:.2} s",
        writes * batch,
        wall.as_secs_f64()
    );
    println!(
        "writer: {:.0} % of a core, {:.2} us per write; sweep p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        writer_cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
        writer_cpu.as_secs_f64() * 1e6 / writes as f64,
        sweep_us.value_at_quantile(0.5) as f64 / 1000.0,
        sweep_us.value_at_quantile(0.99) as f64 / 1000.0,
        sweep_us.max() as f64 / 1000.0,
    );
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("reader failed");
    }
    Ok(())
}

/// The child: connects `n` sockets, reads them all from one epoll loop, reports record ages.
fn reader(port: u16, n: usize, expect: u64) -> anyhow::Result<()> {
    // SAFETY: plain syscall; the returned fd is checked and owned by this function.
    let ep = unsafe { libc::epoll_create1(0) };
    if ep < 0 {
        bail!("epoll_create1: {}", std::io::Error::last_os_error());
    }
    let mut socks = Vec::with_capacity(n);
    for i in 0..n {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nonblocking(true)?;
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        // SAFETY: `ep` and the socket's fd are open; `ev` is a valid epoll_event.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
            bail!("epoll_ctl: {}", std::io::Error::last_os_error());
        }
        socks.push(s);
    }
    // A record may arrive split over two reads: keep each socket's partial record.
    let mut partial = vec![([0u8; RECORD], 0usize); n];
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    let mut reads = 0u64;
    let mut last_progress = Instant::now();
    let cpu_before = thread_cpu();
    let started = Instant::now();
    while received < expect && last_progress.elapsed() < Duration::from_secs(10) {
        // SAFETY: `events` has room for its length; `ep` is open.
        let ready = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 100) };
        for ev in &events[..ready.max(0) as usize] {
            let i = ev.u64 as usize;
            loop {
                match socks[i].read(&mut buf) {
                    Ok(0) => break,
                    Ok(len) => {
                        reads += 1;
                        let now = monotonic_ns();
                        let (rec, have) = &mut partial[i];
                        for &b in &buf[..len] {
                            rec[*have] = b;
                            *have += 1;
                            if *have == RECORD {
                                let stamp = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
                                latency_us.record(now.saturating_sub(stamp) / 1000)?;
                                received += 1;
                                *have = 0;
                            }
                        }
                        last_progress = Instant::now();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    let wall = started.elapsed();
    let cpu = thread_cpu() - cpu_before;
    println!(
        "reader: {received} of {expect} records in {reads} reads ({:.2} per read), {:.0} % of a core",
        received as f64 / reads.max(1) as f64,
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0,
    );
    println!(
        "latency: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        latency_us.value_at_quantile(0.5) as f64 / 1000.0,
        latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        latency_us.value_at_quantile(0.999) as f64 / 1000.0,
        latency_us.max() as f64 / 1000.0,
    );
    Ok(())
}
