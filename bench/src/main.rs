//! Load generator (being written).

fn main() -> anyhow::Result<()> {
    let _ = tokio::runtime::Builder::new_current_thread().build()?;
    Ok(())
}
