//! The status page: server-rendered HTML (no script needed, so it shows in any browser and
//! in a headless screenshot), refreshed every few seconds. Per rollout: its state (and why it
//! halted) and a row per wave with its status, counts and a progress bar. Per campaign: a
//! progress bar (updated, failed, in progress), the per-device table, and a chart of devices
//! updated over time (inline SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::api::timeline_points;
use super::campaign::StoredConfig;
use super::clock::{rfc3339_of_unix_ms, unix_ms_of_gps, Clock};
use super::rollout::StoredRollout;
use super::store::{CampaignRow, DeviceRow, RolloutRow};

/// A rollout as the page shows it: its row and its waves' campaign ids.
#[derive(Debug, Clone)]
pub struct RolloutView {
    pub row: RolloutRow,
    pub waves: BTreeMap<usize, i64>,
}

/// Text for HTML.
pub fn escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;background:#fafafa}\
h1{font-size:22px}h2{font-size:18px;margin:0 0 6px}\
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:16px;margin:0 0 20px}\
.meta{color:#555;font-size:13px;margin:4px 0 10px}\
.bar{display:flex;height:22px;border-radius:4px;overflow:hidden;background:#e8e8e8;margin:8px 0}\
.bar div{height:100%}.up{background:#2e8b57}.fail{background:#c0392b}.prog{background:#f0ad4e}\
table{border-collapse:collapse;font-size:13px;margin-top:10px}\
td,th{border-bottom:1px solid #eee;padding:3px 10px;text-align:left}\
.p-updated{color:#2e8b57;font-weight:bold}.p-failed{color:#c0392b;font-weight:bold}\
.state{display:inline-block;padding:1px 8px;border-radius:10px;background:#eee;font-size:12px}\
.flex{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}\
.rev{background:#8e44ad}.wbar{width:220px;height:14px;margin:2px 0}\
.s-passed,.s-completed{color:#2e8b57;font-weight:bold}\
.s-missed,.s-halted,.s-failed{color:#c0392b;font-weight:bold}\
.s-running{color:#d68910;font-weight:bold}.s-paused,.s-cancelled{color:#555;font-weight:bold}\
.why{color:#c0392b;margin:6px 0}";

fn wall(clock: &Clock, t: i64) -> String {
    rfc3339_of_unix_ms(unix_ms_of_gps(clock.gps_of_campaign(t.max(0) as u64)))
}

/// The chart: devices updated (y) over campaign time (x) from creation.
fn chart(c: &CampaignRow, devices: &[DeviceRow]) -> String {
    let (w, h, pad) = (420.0, 200.0, 36.0);
    let points = timeline_points(devices);
    let total = devices.len().max(1) as f64;
    let t0 = c.created_gps as f64;
    let t1 = points
        .last()
        .map_or(t0 + 1.0, |&t| (t as f64).max(t0 + 1.0));
    let x = |t: f64| pad + (t - t0) / (t1 - t0) * (w - 2.0 * pad);
    let y = |n: f64| h - pad - n / total * (h - 2.0 * pad);
    let mut path = format!("M{:.1},{:.1}", x(t0), y(0.0));
    for (i, &t) in points.iter().enumerate() {
        let _ = write!(
            path,
            " L{:.1},{:.1} L{:.1},{:.1}",
            x(t as f64),
            y(i as f64),
            x(t as f64),
            y(i as f64 + 1.0)
        );
    }
    let span_s = (t1 - t0) / 1000.0;
    format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" \
         xmlns=\"http://www.w3.org/2000/svg\">\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#fff\"/>\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#999\"/>\
         <line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{b}\" stroke=\"#999\"/>\
         <path d=\"{path}\" fill=\"none\" stroke=\"#2e8b57\" stroke-width=\"2\"/>\
         <text x=\"{pad}\" y=\"{ty}\" font-size=\"11\">0 s</text>\
         <text x=\"{r}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\">{span_s:.0} s</text>\
         <text x=\"4\" y=\"{top}\" font-size=\"11\">{n}</text>\
         <text x=\"4\" y=\"{b}\" font-size=\"11\">0</text>\
         <text x=\"{mid}\" y=\"16\" font-size=\"12\" text-anchor=\"middle\">devices updated over time</text>\
         </svg>",
        b = h - pad,
        r = w - pad,
        ty = h - pad + 16.0,
        top = pad + 4.0,
        n = devices.len(),
        mid = w / 2.0,
    )
}

/// A duration in the largest unit that keeps it whole.
fn span(ms: u64) -> String {
    match ms {
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms => format!("{} s", ms / 1000),
    }
}

fn link(path: &str, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("{path}?token={}", escape(t)),
        None => path.to_string(),
    }
}

fn rollout_card(out: &mut String, clock: &Clock, v: &RolloutView, token: Option<&str>) {
    let r = &v.row;
    let cfg: Option<StoredRollout> = serde_json::from_str(&r.config).ok();
    let waves: Vec<serde_json::Value> = serde_json::from_str(&r.waves).unwrap_or_default();
    let _ = write!(
        out,
        "<div class=\"card\" id=\"rollout-{id}\"><h2><a href=\"{href}\">Rollout #{id} {name}</a> \
         <span class=\"state s-{state}\">{state}</span></h2>",
        id = r.id,
        href = link(&format!("/rollouts/{}", r.id), token),
        name = escape(&r.name),
        state = escape(&r.state),
    );
    if let Some(why) = &r.reason {
        let _ = write!(out, "<div class=\"why\">{}</div>", escape(why));
    }
    if let Some(c) = &cfg {
        let _ = write!(
            out,
            "<div class=\"meta\">{n} devices in {w} waves; next wave at {s:.0} % updated and at \
             most {f:.1} % failed or reverted; windows of {len} every {every}, setup {lead} \
             before; created by {by}</div>",
            n = r.devices_total,
            w = waves.len(),
            s = c.success_threshold * 100.0,
            f = c.failure_threshold * 100.0,
            len = span(c.window_len_ms),
            every = span(c.window_every_ms),
            lead = span(c.setup_lead_ms),
            by = escape(&r.created_by),
        );
    }
    out.push_str(
        "<table class=\"waves\"><tr><th>wave</th><th>slice</th><th>status</th><th>devices</th>\
         <th>updated</th><th>failed</th><th>reverted</th><th>progress</th><th>window</th>\
         <th>campaign</th></tr>",
    );
    for w in &waves {
        let k = w["index"].as_u64().unwrap_or(0) as usize;
        let n = w["devices"].as_u64().unwrap_or(0).max(1) as f64;
        let count = |f: &str| w[f].as_u64().unwrap_or(0);
        let pct = |f: &str| count(f) as f64 / n * 100.0;
        let status = w["status"].as_str().unwrap_or("pending");
        let window = match (w["window"][0].as_i64(), w["window"][1].as_i64()) {
            (Some(a), Some(b)) => format!("{} to {}", wall(clock, a), wall(clock, b)),
            _ => String::from("-"),
        };
        let campaign = v.waves.get(&k).map_or(String::from("-"), |cid| {
            format!(
                "<a href=\"{}\">#{cid}</a>",
                link(&format!("/campaigns/{cid}"), token)
            )
        });
        let _ = write!(
            out,
            "<tr class=\"wave\" id=\"rollout-{rid}-wave-{no}\"><td>{no}</td><td>{name}</td>\
             <td class=\"s-{status}\">{status}</td><td>{devices}</td><td>{up}</td><td>{failed}</td>\
             <td>{rev}</td><td><div class=\"bar wbar\" title=\"updated / failed / reverted\">\
             <div class=\"up\" style=\"width:{pu:.1}%\"></div>\
             <div class=\"fail\" style=\"width:{pf:.1}%\"></div>\
             <div class=\"rev\" style=\"width:{pr:.1}%\"></div></div></td><td>{window}</td>\
             <td>{campaign}</td></tr>",
            rid = r.id,
            no = k + 1,
            name = escape(w["name"].as_str().unwrap_or("")),
            status = escape(status),
            devices = count("devices"),
            up = count("updated"),
            failed = count("failed"),
            rev = count("reverted"),
            pu = pct("updated"),
            pf = pct("failed"),
            pr = pct("reverted"),
        );
    }
    out.push_str("</table></div>");
}

fn campaign_card(
    out: &mut String,
    clock: &Clock,
    c: &CampaignRow,
    devices: &[DeviceRow],
    token: Option<&str>,
) {
    let cfg: Option<StoredConfig> = serde_json::from_str(&c.config).ok();
    let total = c.devices_total.max(1) as f64;
    let up = c.devices_updated as f64 / total * 100.0;
    let failed = c.devices_failed as f64 / total * 100.0;
    let rest = (100.0 - up - failed).max(0.0);
    let link = link(&format!("/campaigns/{}", c.id), token);
    let _ = write!(
        out,
        "<div class=\"card\" id=\"campaign-{id}\"><h2><a href=\"{link}\">#{id} {name}</a> \
         <span class=\"state\">{state}</span></h2>",
        id = c.id,
        name = escape(&c.name),
        state = escape(&c.state),
    );
    if let Some(cfg) = &cfg {
        let _ = write!(
            out,
            "<div class=\"meta\">{region} DR{dr} at {freq:.3} MHz; {fs} B fragments, {r} coded; \
             session {start}; window until {end}; frames sent {sent}, refused {refused}</div>",
            region = escape(&cfg.region),
            dr = cfg.dr,
            freq = f64::from(cfg.freq_hz) / 1e6,
            fs = cfg.frag_size,
            r = cfg.redundancy,
            start = wall(clock, cfg.session_start as i64),
            end = wall(clock, cfg.window_end as i64),
            sent = c.frames_sent,
            refused = c.frames_refused,
        );
    }
    let _ = write!(
        out,
        "<div class=\"bar\" title=\"updated / failed / in progress\">\
         <div class=\"up\" style=\"width:{up:.1}%\"></div>\
         <div class=\"fail\" style=\"width:{failed:.1}%\"></div>\
         <div class=\"prog\" style=\"width:{rest:.1}%\"></div></div>\
         <div class=\"meta\"><b>{u} / {t} updated</b>, {f} failed, {p} in progress</div>",
        u = c.devices_updated,
        t = c.devices_total,
        f = c.devices_failed,
        p = c.devices_total - c.devices_updated - c.devices_failed,
    );
    out.push_str("<div class=\"flex\"><table><tr><th>DevEUI</th><th>phase</th><th>missing</th><th>detail</th><th>updated</th></tr>");
    for d in devices {
        let progress: serde_json::Value =
            serde_json::from_str(&d.progress).unwrap_or(serde_json::Value::Null);
        let missing = progress
            .get("missing")
            .and_then(serde_json::Value::as_u64)
            .map_or(String::from("-"), |m| m.to_string());
        let _ = write!(
            out,
            "<tr><td><code>{eui}</code></td><td class=\"p-{phase}\">{phase}</td><td>{missing}</td>\
             <td>{reason}</td><td>{updated}</td></tr>",
            eui = escape(&d.dev_eui),
            phase = escape(&d.phase),
            reason = escape(d.reason.as_deref().unwrap_or("")),
            updated = d.updated_gps.map(|t| wall(clock, t)).unwrap_or_default(),
        );
    }
    out.push_str("</table>");
    out.push_str(&chart(c, devices));
    out.push_str("</div></div>");
}

/// The whole page for these rollouts and campaigns (newest first).
pub fn render(
    clock: &Clock,
    rollouts: &[RolloutView],
    campaigns: &[(CampaignRow, Vec<DeviceRow>)],
    token: Option<&str>,
) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>FUOTA campaigns</title>\
         <meta http-equiv=\"refresh\" content=\"5\"><style>{STYLE}</style></head><body>\
         <h1>FUOTA campaigns</h1>"
    );
    if campaigns.is_empty() && rollouts.is_empty() {
        out.push_str(
            "<p>No campaign yet: create one with <code>fuota campaign create</code>, or a \
             rollout with <code>fuota rollout create</code>.</p>",
        );
    }
    for v in rollouts {
        rollout_card(&mut out, clock, v, token);
    }
    for (c, devices) in campaigns {
        campaign_card(&mut out, clock, c, devices, token);
    }
    out.push_str("</body></html>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_in_whole_units() {
        assert_eq!(span(7_200_000), "2 h");
        assert_eq!(span(5_400_000), "90 min");
        assert_eq!(span(75_000), "75 s");
    }

    #[test]
    fn names_are_escaped() {
        assert_eq!(
            escape("<b a=\"1\">&'"),
            "&lt;b a=&quot;1&quot;&gt;&amp;&#39;"
        );
    }
}
