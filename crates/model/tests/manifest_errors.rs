//! Every class of manifest mistake is reported with file:line:column and
//! the field path, and all of them at once.

use std::path::{Path, PathBuf};

use converge_model::{ManifestErrors, Manifests};

const BASE: &str = r#"
nodes:
  lb1:
    vars: {vrrp_interface: eth0}
backends:
  web:
    service: web
frontends:
  http_in:
    bind: [":80"]
    default_backend: web
targets:
  haproxy:
    template: haproxy.cfg.tera
    destination: /etc/haproxy/haproxy.cfg
    validate: haproxy
"#;

fn load(files: &[(&str, &str)]) -> Result<Manifests, ManifestErrors> {
    let texts: Vec<(PathBuf, String)> = files
        .iter()
        .map(|(n, t)| (PathBuf::from(format!("m/{n}")), t.to_string()))
        .collect();
    let m = Manifests::from_sources(Path::new("m"), &texts)?;
    m.validate()?;
    Ok(m)
}

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    load(files)
        .expect_err("manifests must be rejected")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn the_base_is_valid() {
    load(&[("a.yaml", BASE)]).expect("base manifest is valid");
}

#[test]
fn unknown_field_points_at_the_key() {
    let text = BASE.replace(
        "    service: web\n",
        "    service: web\n    balanse: leastconn\n",
    );
    let errs = errors(&[("a.yaml", &text)]);
    let want = format!(
        "m/a.yaml:{}:5: backends.web.balanse: unknown field `balanse`",
        line_of(&text, "balanse")
    );
    assert!(errs[0].starts_with(&want), "{errs:?}");
}

#[test]
fn wrong_type_names_field_and_line() {
    let text = BASE.replace(
        "    service: web\n",
        "    service: web\n    maxconn: lots\n",
    );
    let errs = errors(&[("a.yaml", &text)]);
    let want = format!("m/a.yaml:{}:", line_of(&text, "maxconn"));
    assert!(
        errs[0].starts_with(&want) && errs[0].contains("backends.web.maxconn"),
        "{errs:?}"
    );
}

#[test]
fn an_unknown_keyword_names_the_allowed_ones() {
    let text = format!("{BASE}haproxy:\n  httpclient_ssl_verify: off\n");
    let errs = errors(&[("a.yaml", &text)]);
    let want = format!("m/a.yaml:{}:", line_of(&text, "httpclient_ssl_verify"));
    assert!(
        errs[0].starts_with(&want)
            && errs[0].contains("haproxy.httpclient_ssl_verify")
            && errs[0].contains("expected `none` or `required`"),
        "{errs:?}"
    );
}

#[test]
fn dangling_backend_reference() {
    let text = BASE.replace("default_backend: web", "default_backend: wbe");
    let errs = errors(&[("a.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let want = format!("m/a.yaml:{}:5: frontends.http_in.default_backend: backend `wbe` is not defined, did you mean `web`?", line_of(&text, "wbe"));
    assert_eq!(errs[0], want);
}

#[test]
fn node_missing_a_var_the_template_needs() {
    let text = format!(
        "{BASE}  keepalived:\n    template: keepalived.conf.tera\n    destination: /etc/keepalived/keepalived.conf\n    validate: keepalived\n    requires_vars: [vrrp_interface, vrrp_priority]\n"
    );
    let errs = errors(&[("a.yaml", &text)]);
    assert!(
        errs.iter().any(
            |e| e.starts_with(&format!("m/a.yaml:{}:", line_of(&text, "vars:")))
                && e.contains("lacks var `vrrp_priority`, which target `keepalived` requires")
        ),
        "{errs:?}"
    );
}

#[test]
fn two_targets_one_destination() {
    let text = format!(
        "{BASE}  other:\n    template: x.tera\n    destination: /etc/haproxy/haproxy.cfg\n    validate: none\n"
    );
    let errs = errors(&[("a.yaml", &text)]);
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("/etc/haproxy/haproxy.cfg"))
        .nth(1)
        .expect("second")
        .0
        + 1;
    assert_eq!(
        errs,
        vec![format!("m/a.yaml:{line}:5: targets.other.destination: target `haproxy` already writes `/etc/haproxy/haproxy.cfg`; two targets cannot own one file")]
    );
}

#[test]
fn every_problem_in_every_file_is_reported() {
    let bad1 = BASE.replace("    service: web\n", "    service: web\n    balanse: x\n");
    let bad2 = "backends:\n  api:\n    service: api\n    mode: udp\nfrontendz: {}\n";
    let errs = errors(&[("a.yaml", &bad1), ("b.yaml", bad2)]);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[1].starts_with("m/b.yaml:4:") && errs[1].contains("backends.api.mode"),
        "{errs:?}"
    );
    assert!(
        errs[2]
            == "m/b.yaml:5:1: frontendz: unknown section `frontendz`, did you mean `frontends`?",
        "{errs:?}"
    );
}

#[test]
fn duplicate_definition_across_files_names_both() {
    let dup = "backends:\n  web:\n    service: web2\n";
    let errs = errors(&[("a.yaml", BASE), ("b.yaml", dup)]);
    assert_eq!(
        errs,
        vec![
            "m/b.yaml:2:3: backends.web: backends `web` is already defined in m/a.yaml".to_string()
        ]
    );
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let errs = errors(&[("a.yaml", "nodes:\n  lb1: [\n")]);
    assert!(errs[0].starts_with("m/a.yaml:"), "{errs:?}");
    assert!(errs[0].contains("invalid YAML"), "{errs:?}");
}

#[test]
fn unknown_node_in_priorities_and_bad_cidr() {
    let text = format!("{BASE}vips:\n  edge:\n    virtual_router_id: 51\n    interface: eth0\n    addresses: [10.0.0.10]\n    priorities: {{lb1: 100, lb3: 90}}\n");
    let errs = errors(&[("a.yaml", &text)]);
    assert!(
        errs.iter()
            .any(|e| e.contains("vips.edge.addresses[0]") && e.contains("CIDR")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("vips.edge.priorities.lb3: node `lb3` is not defined")),
        "{errs:?}"
    );
}

#[test]
fn two_targets_reloading_one_program_must_share_a_bundle() {
    let reload = "    reload:\n      signal: {pidfile: /run/haproxy.pid, signal: SIGUSR2}\n";
    let base = BASE.replace(
        "    validate: haproxy\n",
        &format!("    validate: haproxy\n{reload}"),
    );
    let map = format!(
        "  hosts_map:\n    template: hosts.map.tera\n    destination: /etc/haproxy/hosts.map\n    validate: none\n{reload}"
    );
    let errs = errors(&[("a.yaml", &format!("{base}{map}"))]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("m/a.yaml:")
            && errs[0].contains("targets.hosts_map.bundle")
            && errs[0].contains("target `haproxy` (bundle `haproxy`) reloads the same program (the pid in /run/haproxy.pid)")
            && errs[0].contains("`bundle: haproxy`"),
        "{errs:?}"
    );

    // In one bundle they are checked, committed and reloaded together.
    let bundled = map.replace(
        "    validate: none\n",
        "    validate: none\n    bundle: haproxy\n",
    );
    load(&[("a.yaml", &format!("{base}{bundled}"))]).expect("one bundle is fine");
}

#[test]
fn a_syntax_error_does_not_hide_the_other_files_problems() {
    // `b.yaml` breaks after defining backend `api`; `a.yaml` refers to it
    // (fine, it is written) and to `wbe` (a typo of a backend it defines).
    let broken = "backends:\n  api:\n    service: api\n  other: [\n";
    let text = BASE.replace("default_backend: web", "default_backend: wbe");
    let text = text.replace(
        "    default_backend: wbe\n",
        "    default_backend: wbe\n    routes:\n      - {path_prefix: /api, backend: api}\n",
    );
    let errs = errors(&[("a.yaml", &text), ("b.yaml", broken)]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("m/b.yaml:") && errs[0].contains("invalid YAML"),
        "{errs:?}"
    );
    assert_eq!(
        errs[1],
        format!(
            "m/a.yaml:{}:5: frontends.http_in.default_backend: backend `wbe` is not defined, \
             did you mean `web`? (unless it is in m/b.yaml, which could not be read in full)",
            line_of(&text, "wbe")
        )
    );
}

#[test]
fn an_entry_that_failed_to_load_is_not_also_undefined() {
    let text = BASE.replace(
        "    service: web\n",
        "    service: web\n    maxconn: lots\n",
    );
    let errs = errors(&[("a.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("backends.web.maxconn"), "{errs:?}");
}

#[test]
fn an_unknown_field_offers_the_nearest_one() {
    let text = BASE.replace(
        "    service: web\n",
        "    service: web\n    balnce: leastconn\n",
    );
    let errs = errors(&[("a.yaml", &text)]);
    assert_eq!(
        errs,
        vec![format!(
            "m/a.yaml:{}:5: backends.web.balnce: unknown field `balnce`, did you mean `balance`?",
            line_of(&text, "balnce")
        )]
    );
}

#[test]
fn type_errors_speak_the_manifests_language() {
    let text = BASE
        .replace(
            "    service: web\n",
            "    service: web\n    maxconn: lots\n",
        )
        .replace("bind: [\":80\"]", "bind: \":80\"");
    let text = format!(
        "{text}vips:\n  edge:\n    virtual_router_id: 300\n    interface: eth0\n    addresses: [10.0.0.10/24]\n    priorities: {{lb1: 100}}\n  edge2:\n    virtual_router_id: 52\n    interface: eth0\n    addresses: [10.0.0.11/24]\n    priorities: {{lb1: 100}}\n    unicast: maybe\n"
    );
    let errs = errors(&[("a.yaml", &text)]);
    let find = |path: &str| {
        errs.iter()
            .find(|e| e.contains(path))
            .unwrap_or_else(|| panic!("no error at {path}: {errs:?}"))
            .clone()
    };
    assert!(
        find("backends.web.maxconn").ends_with("expected a whole number, found the text \"lots\""),
        "{errs:?}"
    );
    assert!(
        find("frontends.http_in.bind").ends_with("expected a list, found the text \":80\""),
        "{errs:?}"
    );
    assert!(
        find("vips.edge.virtual_router_id")
            .ends_with("expected a whole number from 0 to 255, got 300"),
        "{errs:?}"
    );
    assert!(
        find("vips.edge2.unicast").ends_with("expected true or false, found the text \"maybe\""),
        "{errs:?}"
    );
    for e in &errs {
        for rust in ["u32", "u8", "a sequence", "a boolean", "struct "] {
            assert!(!e.contains(rust), "`{rust}` in {e}");
        }
    }
}

#[test]
fn a_duration_haproxy_would_refuse_is_refused_at_its_line() {
    let text = format!(
        "{BASE}haproxy:\n  timeouts:\n    connect: 5 secs\n    client: 30s\n    server: 30000\n"
    );
    let errs = errors(&[("a.yaml", &text)]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    let line = line_of(&text, "5 secs");
    assert!(
        errs[0].starts_with(&format!("m/a.yaml:{line}:")),
        "{errs:?}"
    );
    assert!(
        errs[0].contains("haproxy.timeouts.connect")
            && errs[0].contains("`5 secs` is not a duration"),
        "{errs:?}"
    );
    let fine = text.replace("5 secs", "500ms");
    let m = load(&[("a.yaml", &fine)]).expect("valid durations");
    assert_eq!(m.manifest.haproxy.timeouts.connect.to_string(), "500ms");
    assert_eq!(m.manifest.haproxy.timeouts.server.to_string(), "30000");
}
