//! `aviary token`: mints a connection token with an API key, through the same REST endpoint a
//! backend calls (`POST /v1/apps/{app}/tokens`), and prints it. For debugging a client (a
//! browser console, `websocat`) without writing a backend first.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::args::TokenArgs;
use crate::cli::https::Trust;

pub async fn run(args: TokenArgs) -> anyhow::Result<()> {
    let mut body = json!({ "client_id": args.client_id });
    if let Some(ttl) = args.ttl_s {
        body["ttl_s"] = json!(ttl);
    }
    if !args.capabilities.is_empty() {
        body["capabilities"] = json!(capabilities(&args.capabilities)?);
    }
    if let Some(info) = &args.info {
        body["info"] = serde_json::from_str::<Value>(info).context("--info must be a JSON object")?;
    }
    let url = format!("{}/v1/apps/{}/tokens", args.url.trim_end_matches('/'), args.app);
    let trust = args.ca.clone().map_or(Trust::SystemRoots, Trust::Ca);
    let client = crate::cli::https::client(&trust, Duration::from_secs(30))?;
    let res = client
        .post(&url)
        .bearer_auth(&args.api_key)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the control plane at {url}"))?;
    let status = res.status();
    let answer: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        // A problem document: its title and detail say what to fix.
        let title = answer["title"].as_str().unwrap_or("");
        let detail = answer["detail"].as_str().unwrap_or("");
        bail!(
            "the control plane refused the token ({status}): {title}{}{detail}",
            if detail.is_empty() { "" } else { ": " }
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        let token = answer["token"].as_str().context("the answer holds no token")?;
        println!("{token}");
    }
    Ok(())
}

/// `chat:*=subscribe,publish` -> `{"chat:*": ["subscribe", "publish"]}`; the control plane
/// checks the operations and that the key allows them.
fn capabilities(specs: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::<String, Vec<String>>::new();
    for spec in specs {
        let Some((glob, ops)) = spec.rsplit_once('=') else {
            bail!("--capability `{spec}`: expected GLOB=OP,OP (e.g. chat:*=subscribe,publish)");
        };
        let ops = ops.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned);
        out.entry(glob.trim().to_owned()).or_default().extend(ops);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::capabilities;

    #[test]
    fn capability_flags_become_the_rest_shape() {
        let caps = capabilities(&["chat:*=subscribe,publish".into(), "news=subscribe".into()]).unwrap();
        assert_eq!(
            serde_json::to_value(caps).unwrap(),
            serde_json::json!({"chat:*": ["subscribe", "publish"], "news": ["subscribe"]})
        );
        assert!(capabilities(&["chat".into()]).unwrap_err().to_string().contains("GLOB=OP"));
    }
}
