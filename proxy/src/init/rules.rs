//! Rule building, pure: the iptables-restore input that installs or
//! removes the capture, from the validated flags or the current table.

use super::*;

/// One command of the nat table: the arguments after `iptables -t nat`.
pub type Rule = Vec<String>;

/// A rule from its text, split at spaces (no argument Keel writes has one).
pub(super) fn rule(text: impl AsRef<str>) -> Rule {
    text.as_ref()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The commands that install the capture for `c` into a nat table without
/// any KEEL_ chain: chains, their rules, then the jumps from `PREROUTING` and
/// `OUTPUT` (last, so a rule-by-rule replay never captures half-configured).
/// A direction with nothing to capture installs nothing.
pub fn install(c: &Capture) -> Vec<Rule> {
    let mut out = Vec::new();
    let mut add = |text: String| out.push(rule(text));
    if !c.include_inbound.is_empty() {
        add(format!("-N {IN_REDIRECT}"));
        let to = c.inbound_port;
        add(format!(
            "-A {IN_REDIRECT} -p tcp -j REDIRECT --to-ports {to}"
        ));
        add(format!("-N {INBOUND}"));
        match &c.include_inbound {
            Selection::All => {
                for port in &c.exclude_inbound {
                    add(format!("-A {INBOUND} -p tcp --dport {port} -j RETURN"));
                }
                add(format!("-A {INBOUND} -p tcp -j {IN_REDIRECT}"));
            }
            Selection::Only(ports) => {
                for port in ports {
                    add(format!(
                        "-A {INBOUND} -p tcp --dport {port} -j {IN_REDIRECT}"
                    ));
                }
            }
        }
        add(format!("-A PREROUTING -p tcp -j {INBOUND}"));
    }
    if !c.include_outbound.is_empty() {
        add(format!("-N {REDIRECT}"));
        let to = c.outbound_port;
        add(format!("-A {REDIRECT} -p tcp -j REDIRECT --to-ports {to}"));
        add(format!("-N {OUTPUT}"));
        for port in &c.exclude_outbound_ports {
            add(format!("-A {OUTPUT} -p tcp --dport {port} -j RETURN"));
        }
        // The proxy's own connections (upstream, and to the app on its own
        // pod IP) are never captured: that is what keeps them from looping.
        add(format!(
            "-A {OUTPUT} -m owner --uid-owner {} -j RETURN",
            c.proxy_uid
        ));
        if let Some(gid) = c.proxy_gid {
            add(format!("-A {OUTPUT} -m owner --gid-owner {gid} -j RETURN"));
        }
        // The app talking to itself: 127.0.0.0/8 and its own pod IPs both
        // leave through lo.
        add(format!("-A {OUTPUT} -o lo -j RETURN"));
        for cidr in &c.exclude_outbound {
            add(format!("-A {OUTPUT} -d {cidr} -j RETURN"));
        }
        match &c.include_outbound {
            Selection::All => add(format!("-A {OUTPUT} -j {REDIRECT}")),
            Selection::Only(cidrs) => {
                for cidr in cidrs {
                    add(format!("-A {OUTPUT} -d {cidr} -j {REDIRECT}"));
                }
            }
        }
        add(format!("-A OUTPUT -p tcp -j {OUTPUT}"));
    }
    out
}

/// The commands that remove what [`install`] adds, given the nat table as
/// `iptables-save -t nat` prints it: every rule of a non-KEEL_ chain that
/// jumps (or goes) to a KEEL_ chain is deleted, then every KEEL_ chain is
/// flushed and deleted. Empty when there is nothing of Keel's.
pub fn cleanup_from_save(save: &str) -> Vec<Rule> {
    let mut jumps = Vec::new();
    let mut chains = Vec::new();
    let mut in_nat = false;
    for line in save.lines() {
        let line = line.trim();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = line.strip_prefix(':') {
            if let Some(name) = decl.split_whitespace().next()
                && name.starts_with(CHAIN_PREFIX)
                && !chains.iter().any(|c| c == name)
            {
                chains.push(name.to_string());
            }
            continue;
        }
        let args = split_args(line);
        if args.first().map(String::as_str) != Some("-A") {
            continue;
        }
        let Some(chain) = args.get(1) else { continue };
        if chain.starts_with(CHAIN_PREFIX) {
            continue;
        }
        let into_keel = args.windows(2).any(|w| {
            matches!(w[0].as_str(), "-j" | "--jump" | "-g" | "--goto")
                && w[1].starts_with(CHAIN_PREFIX)
        });
        if into_keel {
            let mut delete = args.clone();
            delete[0] = "-D".to_string();
            jumps.push(delete);
        }
    }
    let mut out = jumps;
    out.extend(chains.iter().map(|c| rule(format!("-F {c}"))));
    out.extend(chains.iter().map(|c| rule(format!("-X {c}"))));
    out
}

/// What `--cleanup --dry-run` shows: the removal of everything [`install`]
/// can add (a real run removes what `iptables-save` shows instead).
pub fn cleanup_all() -> Vec<Rule> {
    let mut out = vec![
        rule(format!("-D PREROUTING -p tcp -j {INBOUND}")),
        rule(format!("-D OUTPUT -p tcp -j {OUTPUT}")),
    ];
    for flag in ["-F", "-X"] {
        for chain in [IN_REDIRECT, INBOUND, REDIRECT, OUTPUT] {
            out.push(rule(format!("{flag} {chain}")));
        }
    }
    out
}

/// Splits an iptables-save rule line into arguments (double-quoted
/// arguments, as `--comment "a b"`, are one; `\"` inside is a quote).
pub fn split_args(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut has = false;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' if quoted => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            '"' => {
                quoted = !quoted;
                has = true;
            }
            c if c.is_whitespace() && !quoted => {
                if has || !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            c => cur.push(c),
        }
    }
    if has || !cur.is_empty() {
        out.push(cur);
    }
    out
}

pub(super) fn quote(arg: &str) -> String {
    if !arg.is_empty()
        && !arg
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        return arg.to_string();
    }
    format!("\"{}\"", arg.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `rules` as one `iptables-restore --noflush` batch of the nat table
/// (`comment` lines first, prefixed with `#`). An empty rule list gives an
/// empty batch (`*nat` and `COMMIT` only).
pub fn restore_input(comment: &[&str], rules: &[Rule]) -> String {
    let mut s = String::new();
    for c in comment {
        let _ = writeln!(s, "# {c}");
    }
    s.push_str("*nat\n");
    for r in rules {
        let line: Vec<String> = r.iter().map(|a| quote(a)).collect();
        s.push_str(&line.join(" "));
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}
