//! One small test per form the reader handles (and per form it must refuse), then whole trees.

use super::fragment;
use super::*;
use crate::legacy::model::{SourceKind, Value};
use crate::warnings::Category;
use std::collections::BTreeMap;

const F: &str = "/etc/nixos/configuration.nix";

fn read(src: &str) -> FileFacts {
    read_nix_file(Path::new(F), src).unwrap_or_else(|w| panic!("{}", w.message))
}

fn container<'a>(ff: &'a FileFacts, name: &str) -> &'a SourceFacts {
    ff.containers
        .iter()
        .find(|c| c.container == name)
        .unwrap_or_else(|| {
            panic!(
                "no container {name}; have {:?}",
                ff.containers
                    .iter()
                    .map(|c| &c.container)
                    .collect::<Vec<_>>()
            )
        })
}

fn opt<'a>(c: &'a SourceFacts, o: &str) -> &'a Value {
    &c.options
        .get(o)
        .unwrap_or_else(|| panic!("{} has no {o}: {:?}", c.container, c.options.keys()))
        .0
}

fn line(c: &SourceFacts, o: &str) -> Option<usize> {
    c.options[o].1.line
}

fn s(v: &str) -> Value {
    Value::Str(v.to_string())
}

fn expr(v: &Value) -> &NixExpr {
    match v {
        Value::Expr(e) => e,
        other => panic!("not an expression: {other:?}"),
    }
}

fn attrs(v: &Value) -> &BTreeMap<String, Value> {
    match v {
        Value::Attrs(m) => m,
        other => panic!("not attrs: {other:?}"),
    }
}

fn codes(ws: &[Warning]) -> Vec<&'static str> {
    ws.iter().map(|w| w.code).collect()
}

#[test]
fn a_plain_container_with_literals_lines_and_a_verbatim_config() {
    let src = r#"{ config, pkgs, ... }:
{
  containers.web = {
    autoStart = true;
    privateNetwork = true;
    hostAddress = "10.0.0.1";
    localAddress = "10.0.0.2";
    timeoutStartSec = "2min";
    hostBridge = null;
    extraFlags = [ "-U" "--resolv-conf=off" ];
    forwardPorts = [ { hostPort = 8080; containerPort = 80; } ];
    config = { config, pkgs, ... }: {
      # keep this comment
      services.nginx.enable = true;
      networking.firewall.allowedTCPPorts = [ 80 ];
    };
  };
}
"#;
    let ff = read(src);
    assert!(ff.problems.is_empty(), "{:?}", ff.problems);
    let web = container(&ff, "web");
    assert_eq!(web.kind, SourceKind::NixSource);
    assert_eq!(opt(web, "autoStart"), &Value::Bool(true));
    assert_eq!(line(web, "autoStart"), Some(4));
    assert_eq!(opt(web, "hostAddress"), &s("10.0.0.1"));
    assert_eq!(line(web, "hostAddress"), Some(6));
    assert_eq!(opt(web, "hostBridge"), &Value::Null);
    assert_eq!(
        opt(web, "extraFlags"),
        &Value::List(vec![s("-U"), s("--resolv-conf=off")])
    );
    let Value::List(ports) = opt(web, "forwardPorts") else {
        panic!()
    };
    assert_eq!(attrs(&ports[0])["hostPort"], Value::Int(8080));
    let cfg = expr(opt(web, "config"));
    assert!(
        cfg.text
            .starts_with("{ config, pkgs, ... }: {\n      # keep this comment")
    );
    assert!(cfg.text.ends_with("];\n    }"), "{}", cfg.text);
    assert_eq!(cfg.origin.line, Some(12));
    assert_eq!(cfg.column, 14);
    assert!(cfg.free_vars.is_empty(), "{:?}", cfg.free_vars);
    assert_eq!(line(web, "config"), Some(12));
    assert!(web.warnings.is_empty(), "{:?}", web.warnings);
    assert!(web.condition.is_none());
}

#[test]
fn a_containers_attrset_with_quoted_and_odd_names() {
    let ff = read(
        r#"{
  containers = {
    a = { autoStart = true; };
    "b-2" = { ephemeral = true; };
    "mail.example" = { privateNetwork = true; };
    nginx_pw = { enableTun = true; };
  };
}"#,
    );
    let names: Vec<&str> = ff.containers.iter().map(|c| c.container.as_str()).collect();
    assert_eq!(names, ["a", "b-2", "mail.example", "nginx_pw"]);
    assert_eq!(
        opt(container(&ff, "mail.example"), "privateNetwork"),
        &Value::Bool(true)
    );
    assert_eq!(line(container(&ff, "nginx_pw"), "enableTun"), Some(6));
}

#[test]
fn dotted_paths_spread_over_lines_make_one_container() {
    let ff = read(
        r#"{ lib, ... }: {
  containers.c.autoStart = true;
  networking.hostName = "h";
  containers.c.privateNetwork = true;
  containers.c.config = { services.openssh.enable = true; };
  containers.c.bindMounts."/data".hostPath = "/srv/data";
  containers.c.bindMounts."/data".isReadOnly = false;
}"#,
    );
    assert_eq!(ff.containers.len(), 1);
    let c = container(&ff, "c");
    assert_eq!(line(c, "autoStart"), Some(2));
    assert_eq!(line(c, "privateNetwork"), Some(4));
    assert_eq!(
        expr(opt(c, "config")).text,
        "{ services.openssh.enable = true; }"
    );
    let data = attrs(&attrs(opt(c, "bindMounts"))["/data"]);
    assert_eq!(data["hostPath"], s("/srv/data"));
    assert_eq!(data["isReadOnly"], Value::Bool(false));
}

#[test]
fn dotted_bind_mounts_inside_a_container() {
    let ff = read(
        r#"{
  containers.x = {
    bindMounts.media.hostPath = "/mnt/media";
    bindMounts.media.mountPoint = "/media";
    bindMounts."/etc/resolv.conf" = { hostPath = "/etc/resolv.conf"; };
    bindMounts.ro.isReadOnly = true;
  };
}"#,
    );
    let bm = attrs(opt(container(&ff, "x"), "bindMounts"));
    assert_eq!(attrs(&bm["media"])["mountPoint"], s("/media"));
    assert_eq!(attrs(&bm["media"])["hostPath"], s("/mnt/media"));
    assert_eq!(
        attrs(&bm["/etc/resolv.conf"])["hostPath"],
        s("/etc/resolv.conf")
    );
    assert_eq!(attrs(&bm["ro"])["isReadOnly"], Value::Bool(true));
}

/// Issue 9: a bind mount whose mount point is computed, written as a dotted path
/// (`bindMounts."${secret}".isReadOnly = true;`), is carried as Nix like a computed
/// `bindMounts = { … }`, with the `let` bindings it uses, merged with the literal parts.
#[test]
fn dotted_bind_mounts_with_a_computed_name_are_carried_as_nix() {
    let ff = read(
        r#"{ config, ... }:
let
  secret = "${config.sops.secrets.api.path}";
in
{
  containers.x = {
    bindMounts."${secret}".isReadOnly = true;
    bindMounts."/data" = { hostPath = "/srv/data"; isReadOnly = false; };
  };
}"#,
    );
    let c = container(&ff, "x");
    assert!(
        !codes(&c.warnings).contains(&"nix-dynamic-container")
            && !codes(&c.warnings).contains(&"nix-conflicting-definitions"),
        "{:?}",
        c.warnings
    );
    let e = expr(opt(c, "bindMounts"));
    assert!(e.text.starts_with("lib.mkMerge ["), "{}", e.text);
    assert!(
        e.text.contains(r#"{ "${secret}".isReadOnly = true; }"#),
        "{}",
        e.text
    );
    assert!(e.text.contains(r#""/srv/data""#), "{}", e.text);
    assert_eq!(
        e.lets.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        vec!["secret"]
    );
    assert!(
        e.free_vars.contains(&"config".to_string()),
        "{:?}",
        e.free_vars
    );
    // Any other option with a computed name stays a limit, said as one.
    let ff = read(r#"{ n, ... }: { containers.x.extraVeths."${n}".hostBridge = "br0"; }"#);
    assert!(codes(&container(&ff, "x").warnings).contains(&"nix-dynamic-container"));
}

#[test]
fn dotted_guest_config_pieces_become_one_module() {
    let ff = read(
        r#"{
  containers.x.config.services.nginx.enable = true;
  containers.x.config.networking.firewall.enable = false;
}"#,
    );
    let cfg = expr(opt(container(&ff, "x"), "config"));
    assert!(cfg.text.contains("imports = ["), "{}", cfg.text);
    assert!(cfg.text.contains("({ services.nginx.enable = true; })"));
    assert!(
        cfg.text
            .contains("({ networking.firewall.enable = false; })")
    );
    assert_eq!(cfg.origin.line, Some(2));
}

#[test]
fn mkif_around_a_container_is_its_condition() {
    let ff = read(
        r#"{ config, lib, ... }:
let enableDb = config.services.postgresql.enable; in
{
  containers.db = lib.mkIf enableDb {
    autoStart = true;
  };
  containers.web = lib.mkIf (config.networking.hostName == "h") { autoStart = false; };
}"#,
    );
    let db = container(&ff, "db");
    let cond = db.condition.as_ref().unwrap();
    assert_eq!(cond.text, "enableDb");
    assert_eq!(cond.origin.line, Some(4));
    assert_eq!(cond.free_vars, ["enableDb"]);
    assert_eq!(opt(db, "autoStart"), &Value::Bool(true));
    assert_eq!(
        container(&ff, "web").condition.as_ref().unwrap().text,
        "(config.networking.hostName == \"h\")"
    );
}

#[test]
fn module_level_mkif_mkmerge_update_and_optional_attrs() {
    let ff = read(
        r#"{ config, lib, ... }:
let cfg = config.my.containers; in
{
  options.my.containers.enable = lib.mkEnableOption "x";
  config = lib.mkIf cfg.enable (lib.mkMerge [
    { containers.a.autoStart = true; }
    {
      containers = { b.autoStart = true; }
        // lib.optionalAttrs cfg.withC { c.autoStart = true; };
    }
  ]);
}"#,
    );
    assert!(ff.problems.is_empty(), "{:?}", ff.problems);
    assert_eq!(
        container(&ff, "a").condition.as_ref().unwrap().text,
        "cfg.enable"
    );
    assert_eq!(
        container(&ff, "b").condition.as_ref().unwrap().text,
        "cfg.enable"
    );
    let c = container(&ff, "c").condition.as_ref().unwrap();
    assert_eq!(c.text, "(cfg.enable) && (cfg.withC)");
    // `cfg` is the file's `let` binding: carried with the condition, which leaves `config`.
    assert_eq!(c.free_vars, ["config"]);
    let lets: Vec<&str> = c.lets.iter().map(|l| l.text.as_str()).collect();
    assert_eq!(lets.len(), 1, "{lets:?}");
    assert!(lets[0].starts_with("cfg = config."), "{lets:?}");
}

#[test]
fn let_bound_values_resolve_through_the_scope_chain() {
    let ff = read(
        r#"{ lib, ... }:
let
  hostBridge = "br0";
  prefix = "10.0.0";
  common = { autoStart = true; privateNetwork = true; };
  addrs = { web = { localAddress = "${prefix}.2/24"; }; };
in
let hostAddress = "${prefix}.1"; in
{
  containers.web = common // {
    inherit hostBridge;
    inherit (addrs.web) localAddress;
    hostAddress = hostAddress;
    bindMounts = { data = { hostPath = "/srv/${prefix}"; }; };
  };
}"#,
    );
    let web = container(&ff, "web");
    assert!(web.warnings.is_empty(), "{:?}", web.warnings);
    assert_eq!(opt(web, "autoStart"), &Value::Bool(true));
    assert_eq!(opt(web, "hostBridge"), &s("br0"));
    assert_eq!(opt(web, "localAddress"), &s("10.0.0.2/24"));
    assert_eq!(opt(web, "hostAddress"), &s("10.0.0.1"));
    assert_eq!(line(web, "hostAddress"), Some(13));
    assert_eq!(
        attrs(&attrs(opt(web, "bindMounts"))["data"])["hostPath"],
        s("/srv/10.0.0")
    );
}

#[test]
fn a_let_bound_container_and_inherit_in_containers() {
    let ff = read(
        r#"let
  web = { autoStart = true; };
in {
  containers = { inherit web; api = web // { ephemeral = true; }; };
}"#,
    );
    assert_eq!(opt(container(&ff, "web"), "autoStart"), &Value::Bool(true));
    assert_eq!(opt(container(&ff, "api"), "ephemeral"), &Value::Bool(true));
    assert_eq!(opt(container(&ff, "api"), "autoStart"), &Value::Bool(true));
}

#[test]
fn mkdefault_and_mkforce_are_looked_through() {
    let ff = read(
        "{ lib, ... }: { containers.x = { autoStart = lib.mkDefault true; ephemeral = lib.mkForce false; }; }",
    );
    let x = container(&ff, "x");
    assert_eq!(opt(x, "autoStart"), &Value::Bool(true));
    assert_eq!(opt(x, "ephemeral"), &Value::Bool(false));
}

#[test]
fn vivlim_mkmerge_of_a_let_bound_common_part() {
    let ff = read(
        r#"{ lib, ... }:
let
  common = {
    privateNetwork = true;
    hostAddress = "192.168.100.10";
    config = { networking.useHostResolvConf = lib.mkForce false; };
  };
in {
  containers.mastodon = lib.mkMerge [ common { localAddress = "192.168.100.11"; } ];
}"#,
    );
    let m = container(&ff, "mastodon");
    assert_eq!(opt(m, "hostAddress"), &s("192.168.100.10"));
    assert_eq!(opt(m, "localAddress"), &s("192.168.100.11"));
    let cfg = expr(opt(m, "config"));
    assert_eq!(cfg.origin.line, Some(6));
    assert_eq!(cfg.free_vars, ["lib"]);
}

#[test]
fn non_literal_values_stay_verbatim_with_free_variables_and_a_warning() {
    let ff = read(
        r#"{ config, lib, pkgs, ... }:
let mkAddr = n: "10.0.0.${toString n}"; in
{
  containers.x = {
    privateUsers = mkAddr 2;
    nixpkgs = pkgs.path;
    specialArgs = { parentConfig = config; };
    config = { ... }: { networking.hostName = config.networking.hostName; };
  };
}"#,
    );
    let x = container(&ff, "x");
    let la = expr(opt(x, "privateUsers"));
    assert_eq!(la.text, "mkAddr 2");
    // The helper is the file's `let` binding: carried along, nothing left free.
    assert!(la.free_vars.is_empty(), "{:?}", la.free_vars);
    assert_eq!(la.lets.len(), 1);
    assert_eq!(la.lets[0].text, r#"mkAddr = n: "10.0.0.${toString n}";"#);
    assert_eq!(la.lets[0].line, 2);
    assert_eq!(la.origin.line, Some(5));
    assert_eq!(la.column, 20);
    assert_eq!(expr(opt(x, "nixpkgs")).free_vars, ["pkgs"]);
    // specialArgs is code for the guest's evaluation: verbatim.
    let sa = expr(opt(x, "specialArgs"));
    assert_eq!(sa.text, "{ parentConfig = config; }");
    assert_eq!(sa.free_vars, ["config"]);
    // `{ ... }:` does not bind `config`: this is the host's config, so it is free.
    assert_eq!(expr(opt(x, "config")).free_vars, ["config"]);
    assert_eq!(codes(&x.warnings), ["nix-unresolved-value"]);
    let w = &x.warnings[0];
    assert_eq!(w.line, Some(5));
    assert_eq!(w.option, "containers.x.privateUsers");
    assert!(w.message.contains("configuration.nix:5"), "{}", w.message);
    assert!(w.message.contains(EVAL_COMMAND_NIXOS), "{}", w.message);
    assert!(w.message.contains(FROM_JSON_COMMAND), "{}", w.message);
}

#[test]
fn config_forms_are_kept_verbatim() {
    let ff = read(
        r#"{ config, lib, pkgs, ... }: {
  containers.a.config = import ./guests/a.nix;
  containers.b.config = lib.mkMerge [ { a = 1; } { b = 2; } ];
  containers.c.config = { imports = [ (import ./x.nix { inherit config pkgs; }) ]; };
}"#,
    );
    let a = container(&ff, "a");
    assert_eq!(expr(opt(a, "config")).text, "import ./guests/a.nix");
    assert_eq!(codes(&a.warnings), ["nix-relative-path"]);
    assert!(a.warnings[0].message.contains("relative to /etc/nixos"));
    assert_eq!(expr(opt(container(&ff, "b"), "config")).free_vars, ["lib"]);
    assert_eq!(
        expr(opt(container(&ff, "c"), "config")).free_vars,
        ["config", "pkgs"]
    );
}

#[test]
fn imports_are_collected_relative_to_the_file() {
    let ff = read_nix_file(
        Path::new("/etc/nixos/hosts/h.nix"),
        r#"{ inputs, lib, ... }:
let extra = [ ../common/base.nix ]; in
{
  imports = [
    ./hardware.nix
    /etc/nixos/secrets.nix
    "/etc/nixos/str.nix"
    <nixpkgs/nixos/modules/virtualisation/docker.nix>
    (import ./fn.nix { inherit lib; })
    inputs.sops-nix.nixosModules.sops
    ./containers
    "${inputs.foo}/module.nix"
  ] ++ extra;
}"#,
    )
    .unwrap();
    let paths: Vec<String> = ff
        .imports
        .iter()
        .map(|i| i.path.display().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/etc/nixos/hosts/hardware.nix",
            "/etc/nixos/secrets.nix",
            "/etc/nixos/str.nix",
            "/etc/nixos/hosts/fn.nix",
            "/etc/nixos/hosts/containers",
            "/etc/nixos/common/base.nix",
        ]
    );
    assert_eq!(ff.imports[0].line, 5);
    assert!(ff.imports.iter().all(|i| i.role == ImportRole::Module));
    assert_eq!(codes(&ff.problems), ["nix-import-not-followed"]);
    assert_eq!(ff.problems[0].line, Some(12));
    assert!(ff.problems[0].message.contains("inputs.foo"));
}

#[test]
fn files_holding_containers_or_one_container_are_followed() {
    let ff = read(
        r#"{ pkgs, lib, ... }: {
  containers = import ./containers.nix // {
    web = import ./web.nix;
    enc = import ./encoder.nix { inherit pkgs; };
    db = lib.mkIf false (import ./db.nix);
  };
}"#,
    );
    let roles: Vec<(String, ImportRole)> = ff
        .imports
        .iter()
        .map(|i| (i.path.display().to_string(), i.role.clone()))
        .collect();
    assert_eq!(
        roles,
        [
            ("/etc/nixos/containers.nix".into(), ImportRole::Containers),
            (
                "/etc/nixos/web.nix".into(),
                ImportRole::Container("web".into())
            ),
            (
                "/etc/nixos/encoder.nix".into(),
                ImportRole::Container("enc".into())
            ),
            (
                "/etc/nixos/db.nix".into(),
                ImportRole::Container("db".into())
            ),
        ]
    );
    assert_eq!(
        container(&ff, "db").condition.as_ref().unwrap().text,
        "false"
    );
}

#[test]
fn generated_container_sets_need_nix_eval() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "{ config, lib, ... }: {\n  containers = builtins.mapAttrs mkContainer config.my.hosts;\n}",
            2,
            "mapAttrs",
        ),
        (
            "{ lib, ... }: {\n  containers = builtins.listToAttrs (lib.imap1 (i: n: lib.nameValuePair n { }) names);\n}",
            2,
            "listToAttrs",
        ),
        (
            "{ lib, ... }: {\n  containers = lib.genAttrs [ \"a\" \"b\" ] (n: { });\n}",
            2,
            "genAttrs",
        ),
        (
            "{ name, ... }: {\n  containers.${name} = { autoStart = true; };\n}",
            2,
            "containers.${name}",
        ),
        (
            "{ sub, ... }: {\n  containers.\"${sub}\".autoStart = true;\n}",
            2,
            "\"${sub}\"",
        ),
        (
            "{ cond, ... }: {\n  containers = if cond then { a = { }; } else { };\n}",
            2,
            "if … then … else",
        ),
    ];
    for (src, l, needle) in cases {
        let ff = read(src);
        assert_eq!(codes(&ff.problems), ["nix-dynamic-containers"], "{src}");
        let w = &ff.problems[0];
        assert_eq!(w.line, Some(*l), "{src}");
        assert!(w.message.contains(needle), "{src}: {}", w.message);
        assert!(w.message.contains(EVAL_COMMAND_NIXOS), "{}", w.message);
        assert_eq!(w.category, Category::NeedsHuman);
    }
}

#[test]
fn a_named_container_built_by_code_is_kept_with_a_warning() {
    let cases: &[(&str, &str)] = &[
        (
            // A function from elsewhere (a function of this file is read through: see
            // `calls_of_this_files_functions_are_read_through`).
            "{ mkContainer, ... }: {\n  containers.x = mkContainer \"x\" { };\n}",
            "mkContainer",
        ),
        (
            "{ c, ... }: {\n  containers.x = if c then { } else { autoStart = true; };\n}",
            "if … then … else",
        ),
        (
            "{ common, ... }: {\n  containers.x = common // { autoStart = true; };\n}",
            "common",
        ),
        (
            "let f = import ./x.nix; in {\n  containers = { inherit (f) x; };\n}",
            "inherit (f) x",
        ),
    ];
    for (src, needle) in cases {
        let ff = read(src);
        let x = container(&ff, "x");
        assert_eq!(codes(&x.warnings), ["nix-dynamic-container"], "{src}");
        assert_eq!(x.warnings[0].line, Some(2));
        assert!(
            x.warnings[0].message.contains(needle),
            "{}",
            x.warnings[0].message
        );
    }
    // What could be read is kept.
    let ff = read(cases[2].0);
    assert_eq!(opt(container(&ff, "x"), "autoStart"), &Value::Bool(true));
}

#[test]
fn inherit_of_an_unknown_value_inside_a_container() {
    let ff = read(
        "{ hostAddress, addresses, name, ... }: {\n  containers.x = {\n    inherit hostAddress;\n    inherit (addresses.${name}) localAddress;\n  };\n}",
    );
    let x = container(&ff, "x");
    let ha = expr(opt(x, "hostAddress"));
    assert_eq!(ha.text, "hostAddress");
    assert_eq!(ha.free_vars, ["hostAddress"]);
    assert_eq!(ha.origin.line, Some(3));
    let la = expr(opt(x, "localAddress"));
    assert_eq!(la.text, "(addresses.${name}).localAddress");
    assert_eq!(la.free_vars, ["addresses", "name"]);
    // Addresses are carried as Nix by the translator, which reports what it does with them.
    assert!(codes(&x.warnings).is_empty(), "{:?}", x.warnings);
    let ff = read("{ extraFlags, ... }: { containers.x = { inherit extraFlags; }; }");
    assert_eq!(
        codes(&container(&ff, "x").warnings),
        ["nix-unresolved-value"]
    );
}

#[test]
fn things_that_are_not_legacy_containers_are_ignored() {
    let ff = read(
        r#"{ config, lib, ... }: {
  virtualisation.containers.enable = true;
  virtualisation.oci-containers.containers.web.image = "nginx";
  boot.enableContainers = true;
  options.containers = lib.mkOption { };
  networking.nat.internalInterfaces = [ "ve-+" ];
  environment.etc."containers/policy.json".text = "{}";
  systemd.services = lib.mapAttrs (n: v: { }) config.something;
}"#,
    );
    assert!(ff.containers.is_empty(), "{:?}", ff.containers);
    assert!(ff.problems.is_empty(), "{:?}", ff.problems);
}

#[test]
fn conflicting_definitions_keep_the_first_and_say_so() {
    let ff = read(
        "{\n  containers.x.hostAddress = \"10.0.0.1\";\n  containers.x.hostAddress = \"10.0.0.9\";\n  containers.x.extraFlags = [ \"-U\" ];\n  containers.x.extraFlags = [ \"--a\" ];\n}",
    );
    let x = container(&ff, "x");
    assert_eq!(opt(x, "hostAddress"), &s("10.0.0.1"));
    assert_eq!(opt(x, "extraFlags"), &Value::List(vec![s("-U"), s("--a")]));
    assert_eq!(codes(&x.warnings), ["nix-conflicting-definitions"]);
    assert!(x.warnings[0].message.contains("configuration.nix:2"));
    assert!(x.warnings[0].message.contains("configuration.nix:3"));
}

#[test]
fn parse_errors_give_line_and_column_and_refuse_the_file() {
    let cases: &[(&str, usize, usize)] = &[
        ("{\n  containers.x = { foo = ; };\n}", 2, 26),
        ("{\n  a = 1;\n  b = [ 1 2\n}\n", 4, 1),
        ("{ a = 1;", 1, 9),
        ("", 1, 1),
    ];
    for (src, l, c) in cases {
        let w = read_nix_file(Path::new(F), src).unwrap_err();
        assert_eq!(w.code, "nix-parse-error");
        assert_eq!(w.line, Some(*l), "{src}: {}", w.message);
        assert!(
            w.message.starts_with(&format!("{F}:{l}:{c}:")),
            "{src}: {}",
            w.message
        );
        assert!(!w.message.contains(".."), "byte ranges leak: {}", w.message);
    }
}

#[test]
fn the_apply_expression_and_commands_are_what_we_document() {
    assert!(EVAL_COMMAND_NIXOS.contains(EVAL_APPLY));
    assert!(EVAL_COMMAND_FLAKE.contains(EVAL_APPLY));
    let c = EvalCommand::Flake {
        dir: "/etc/nixos".into(),
        host: Some("my.host".into()),
    }
    .command();
    assert!(
        c.contains("'/etc/nixos#nixosConfigurations.\"my.host\".config.containers'"),
        "{c}"
    );
    let c = EvalCommand::for_config(Path::new("/etc/nixos/hosts/a.nix")).command();
    assert!(
        c.contains("(import <nixpkgs/nixos> { configuration = /etc/nixos/hosts/a.nix; })"),
        "{c}"
    );
    assert_eq!(
        EvalCommand::for_config(Path::new("/etc/nixos/configuration.nix")).command(),
        EVAL_COMMAND_NIXOS
    );
}

/// Every `config` text the reader emits must be a complete Nix expression for the real parser.
#[test]
fn emitted_config_texts_parse_with_real_nix_instantiate() {
    let srcs = [r#"{ config, pkgs, ... }: {
  containers.a.config = { config, pkgs, ... }: {
    # a comment
    services.nginx.virtualHosts."x".locations."/".extraConfig = ''
      return 200 "${config.networking.hostName}";
    '';
  };
  containers.b.config.services.openssh.enable = true;
  containers.b.config.networking.firewall.allowedTCPPorts = [ 22 ];
  containers.c = { config = import ./c.nix; };
  containers.c.config.x = 1;
}"#];
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for src in srcs {
        let ff = read(src);
        for c in &ff.containers {
            let cfg = expr(opt(c, "config"));
            let p = dir.path().join(format!("{n}.nix"));
            n += 1;
            std::fs::write(&p, &cfg.text).unwrap();
            match std::process::Command::new("nix-instantiate")
                .arg("--parse")
                .arg(&p)
                .output()
            {
                Ok(out) => assert!(
                    out.status.success(),
                    "{}: {}\n{}",
                    c.container,
                    cfg.text,
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(_) => assert!(
                    std::env::var_os("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").is_none(),
                    "nix-instantiate is required"
                ),
            }
        }
    }
    assert_eq!(n, 3);
}

// ---- whole trees: fixtures/nix/<scenario>/ is a host root -------------------------------------

fn fixture(name: &str) -> HostRoot {
    HostRoot::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/nix")
            .join(name),
    )
    .unwrap()
}

fn tree(name: &str) -> NixSourceResult {
    let root = fixture(name);
    read_config_tree(&HostFs(&root), Path::new(F))
}

fn fact<'a>(r: &'a NixSourceResult, name: &str) -> &'a SourceFacts {
    r.facts
        .iter()
        .find(|c| c.container == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn names(r: &NixSourceResult) -> Vec<&str> {
    r.facts.iter().map(|c| c.container.as_str()).collect()
}

#[test]
fn jemilsson_one_file_per_container() {
    let r = tree("jemilsson");
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(names(&r), ["db", "stubby", "caddy"]);
    let files: Vec<String> = r
        .files_read
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "/etc/nixos/configuration.nix",
            "/etc/nixos/hardware-configuration.nix",
            "/etc/nixos/containers/stubby.nix",
            "/etc/nixos/containers/caddy.nix",
            "/etc/nixos/containers/db.nix",
        ]
    );
    let db = fact(&r, "db");
    assert_eq!(opt(db, "hostAddress"), &s("192.168.100.1"));
    assert_eq!(
        db.options["hostAddress"].1.file,
        Path::new("/etc/nixos/containers/db.nix")
    );
    assert_eq!(line(db, "hostAddress"), Some(4));
    let pg = attrs(&attrs(opt(db, "bindMounts"))["/var/lib/postgresql"]);
    assert_eq!(pg["isReadOnly"], Value::Bool(false));
    assert_eq!(expr(opt(db, "config")).origin.line, Some(8));
    let stubby = fact(&r, "stubby");
    assert_eq!(opt(stubby, "localAddress6"), &s("fd00:10::53/64"));
    // `lib` is the host module's argument, used in the guest text.
    assert_eq!(expr(opt(stubby, "config")).free_vars, ["lib"]);
    let caddy = fact(&r, "caddy");
    let cfg = expr(opt(caddy, "config"));
    assert_eq!(
        cfg.text,
        "import ./caddy-guest.nix { hostConfig = config; inherit pkgs; }"
    );
    assert_eq!(cfg.free_vars, ["config", "pkgs"]);
    assert_eq!(codes(&caddy.warnings), ["nix-relative-path"]);
}

#[test]
fn golden_nix_container_functions_of_pkgs() {
    let r = tree("golden-nix");
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    let enc = fact(&r, "encoder");
    assert_eq!(opt(enc, "ephemeral"), &Value::Bool(true));
    let Value::List(devs) = opt(enc, "allowedDevices") else {
        panic!()
    };
    assert_eq!(attrs(&devs[0])["node"], s("/dev/dri/renderD128"));
    assert_eq!(expr(opt(enc, "config")).free_vars, ["pkgs"]);
    let relay = fact(&r, "relay");
    let Value::List(ports) = opt(relay, "forwardPorts") else {
        panic!()
    };
    assert_eq!(attrs(&ports[0])["hostPort"], Value::Int(9000));
    assert_eq!(attrs(&ports[0])["protocol"], s("udp"));
    // The guest text uses the file's `let` name: the binding travels with the text.
    let cfg = expr(opt(relay, "config"));
    assert!(cfg.free_vars.is_empty(), "{:?}", cfg.free_vars);
    let lets: Vec<&str> = cfg.lets.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(lets, ["port"]);
}

#[test]
fn c0d3d_whole_containers_attrset_in_a_file() {
    let r = tree("c0d3d");
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(names(&r), ["mail.example", "web.example"]);
    let web = fact(&r, "web.example");
    assert_eq!(web.file, Path::new("/etc/nixos/containers.nix"));
    assert_eq!(line(web, "localAddress"), Some(15));
}

#[test]
fn iliana_generated_containers_need_nix_eval() {
    let r = tree("iliana");
    assert!(r.facts.is_empty());
    assert_eq!(codes(&r.problems), ["nix-dynamic-containers"]);
    let w = &r.problems[0];
    assert_eq!(w.line, Some(19));
    assert!(
        w.message.contains("builtins.mapAttrs mkContainer"),
        "{}",
        w.message
    );
    assert!(w.message.contains(EVAL_COMMAND_NIXOS));
}

#[test]
fn samuel_martineau_list_to_attrs_needs_nix_eval() {
    let r = tree("samuel-martineau");
    assert!(r.facts.is_empty());
    assert_eq!(codes(&r.problems), ["nix-dynamic-containers"]);
    assert_eq!(r.problems[0].line, Some(9));
    assert!(r.problems[0].message.contains("listToAttrs"));
}

#[test]
fn vivlim_mkmerge_common_parts() {
    let r = tree("vivlim");
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    let m = fact(&r, "mastodon");
    assert_eq!(opt(m, "hostAddress"), &s("192.168.100.10"));
    assert_eq!(opt(m, "localAddress"), &s("192.168.100.11"));
    let cfg = expr(opt(m, "config"));
    assert!(cfg.text.contains("imports = ["), "{}", cfg.text);
    assert!(cfg.text.contains("services.resolved.enable = true;"));
    assert!(cfg.text.contains("services.mastodon.enable = true;"));
    let a = fact(&r, "akkoma");
    assert_eq!(opt(a, "autoStart"), &Value::Bool(true));
    assert!(m.warnings.is_empty() && a.warnings.is_empty());
}

#[test]
fn a_file_that_does_not_parse_is_refused_and_the_others_are_read() {
    let r = tree("broken");
    assert_eq!(names(&r), ["good"]);
    assert_eq!(
        codes(&r.problems),
        ["nix-parse-error", "nix-file-unreadable"]
    );
    let p = &r.problems[0];
    assert_eq!(p.file.as_deref(), Some(Path::new("/etc/nixos/broken.nix")));
    assert_eq!(p.line, Some(3));
    assert!(
        p.message.starts_with("/etc/nixos/broken.nix:3:11:"),
        "{}",
        p.message
    );
    let m = &r.problems[1];
    assert!(
        m.message.contains("/etc/nixos/missing.nix"),
        "{}",
        m.message
    );
    assert!(
        m.message
            .contains("imported at /etc/nixos/configuration.nix:3")
    );
}

#[test]
fn import_cycles_are_read_once() {
    let r = tree("cycle");
    assert_eq!(names(&r), ["top", "a"]);
    assert_eq!(r.files_read.len(), 2);
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
}

#[test]
fn plain_fs_reads_a_config_outside_the_root() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    std::fs::write(dir.path().join("host.nix"), "{ imports = [ ./sub ]; }").unwrap();
    std::fs::write(
        dir.path().join("sub/default.nix"),
        "{ containers.x.autoStart = true; }",
    )
    .unwrap();
    let entry = dir.path().join("host.nix");
    let r = read_config_tree(&PlainFs, &entry);
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(names(&r), ["x"]);
    assert_eq!(r.files_read[1], dir.path().join("sub/default.nix"));
}

#[test]
fn conditions_of_an_import_apply_to_its_containers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("host.nix"),
        "{ lib, ... }: let on = true; in { imports = lib.optionals on [ ./c.nix ]; containers = lib.mkIf on (import ./set.nix); }",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("c.nix"),
        "{ containers.x.autoStart = true; }",
    )
    .unwrap();
    std::fs::write(dir.path().join("set.nix"), "{ y.autoStart = true; }").unwrap();
    let r = read_config_tree(&PlainFs, &dir.path().join("host.nix"));
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    for n in ["x", "y"] {
        assert_eq!(fact(&r, n).condition.as_ref().unwrap().text, "on", "{n}");
    }
}

// ---- flakes ------------------------------------------------------------------------------------

#[test]
fn flake_host_by_name_follows_literal_modules() {
    let root = fixture("flake-host");
    let fs = HostFs(&root);
    let flake = Path::new("/etc/nixos/flake.nix");
    let fr = read_flake(&fs, flake, Some("patched"));
    assert!(fr.problems.is_empty(), "{:#?}", fr.problems);
    assert_eq!(fr.hosts, ["patched"]);
    let entries: Vec<String> = fr.entries.iter().map(|p| p.display().to_string()).collect();
    assert_eq!(
        entries,
        [
            "/etc/nixos/common.nix",
            "/etc/nixos/hosts/patched/configuration.nix"
        ]
    );
    assert_eq!(fr.facts.len(), 1);
    assert_eq!(fr.facts[0].container, "inline");
    let eval = fr.eval_command.clone().unwrap();
    assert!(
        eval.command()
            .contains("'/etc/nixos#nixosConfigurations.patched.config.containers'")
    );
    // The entries read as a tree: the patched module copy defines no container.
    let mut all = Vec::new();
    for e in &fr.entries {
        let r = read_config_tree_with(&fs, e, &eval);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        all.extend(r.facts);
    }
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].container, "vault");
    assert_eq!(opt(&all[0], "systemCallFilter"), &s("@system-service"));

    // All in one call.
    let r = read_flake_config(&fs, flake, Some("patched"));
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(names(&r), ["inline", "vault"]);
    let files: Vec<String> = r
        .files_read
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "/etc/nixos/flake.nix",
            "/etc/nixos/common.nix",
            "/etc/nixos/hosts/patched/configuration.nix",
            "/etc/nixos/hosts/patched/nixos-containers-patched.nix",
        ]
    );
}

#[test]
fn flake_with_several_hosts_and_no_name_reads_all_and_says_so() {
    let root = fixture("flake-host");
    let fr = read_flake(&HostFs(&root), Path::new("/etc/nixos/flake.nix"), None);
    assert_eq!(fr.hosts, ["patched", "other"]);
    assert_eq!(codes(&fr.problems), ["nix-flake-several-hosts"]);
    assert!(fr.problems[0].message.contains("patched, other"));
    assert!(fr.eval_command.is_none());
    assert_eq!(fr.entries.len(), 3);
}

#[test]
fn flake_unknown_host_and_dynamic_modules_say_what_to_run() {
    let root = fixture("flake-host");
    let fr = read_flake(
        &HostFs(&root),
        Path::new("/etc/nixos/flake.nix"),
        Some("nope"),
    );
    assert!(fr.entries.is_empty());
    assert_eq!(codes(&fr.problems), ["nix-flake-modules-dynamic"]);
    assert!(
        fr.problems[0]
            .message
            .contains("hosts found: patched, other")
    );
    assert!(
        fr.problems[0]
            .message
            .contains("'/etc/nixos#nixosConfigurations.nope.config.containers'")
    );

    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake.nix");
    std::fs::write(
        &flake,
        r#"{
  outputs = { nixpkgs, ... }: let
    mkHost = name: nixpkgs.lib.nixosSystem { modules = [ ./hosts/${name}.nix ]; };
  in {
    nixosConfigurations.a = mkHost "a";
    nixosConfigurations.b = nixpkgs.lib.nixosSystem {
      modules = [ ./b.nix (import ./hosts { inherit nixpkgs; }) extraModules ];
    };
  };
}"#,
    )
    .unwrap();
    let fr = read_flake(&PlainFs, &flake, Some("a"));
    assert_eq!(codes(&fr.problems), ["nix-flake-modules-dynamic"]);
    let m = &fr.problems[0].message;
    assert!(m.contains("flake.nix:5"), "{m}");
    assert!(m.contains("mkHost \"a\""), "{m}");
    assert!(m.contains("--config FILE"), "{m}");
    assert!(
        m.contains("#nixosConfigurations.a.config.containers'"),
        "{m}"
    );
    assert!(m.contains(FROM_JSON_COMMAND), "{m}");
    let fr = read_flake(&PlainFs, &flake, Some("b"));
    assert_eq!(
        fr.entries,
        [dir.path().join("b.nix"), dir.path().join("hosts")]
    );
    assert_eq!(codes(&fr.problems), ["nix-flake-modules-dynamic"]);
    assert_eq!(fr.problems[0].line, Some(7));
    assert!(fr.problems[0].message.contains("`extraModules`"));

    std::fs::write(
        &flake,
        "{ outputs = inputs: { nixosConfigurations = inputs.nixpkgs.lib.genAttrs [ \"a\" ] mk; }; }",
    )
    .unwrap();
    let fr = read_flake(&PlainFs, &flake, Some("a"));
    assert_eq!(codes(&fr.problems), ["nix-dynamic-containers"]);
}

#[test]
fn exponentially_large_let_values_do_not_hang() {
    let mut src = String::from("let\n");
    for i in 0..40 {
        src.push_str(&format!("  a{i} = [ a{} a{} ];\n", i + 1, i + 1));
    }
    src.push_str("  a40 = \"x\";\nin {\n  containers.x.extraFlags = a0;\n  containers.y = { autoStart = a0; };\n}\n");
    let started = std::time::Instant::now();
    let ff = read(&src);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(ff.containers.len(), 2);
}

#[test]
fn self_referencing_lets_do_not_loop() {
    let ff = read(
        "let a = a; b = { x = b.x; }; in { containers.x = { hostAddress = a; localAddress = b.x; }; containers.y = b; }",
    );
    let x = container(&ff, "x");
    assert_eq!(expr(opt(x, "hostAddress")).text, "a");
    assert_eq!(expr(opt(x, "localAddress")).text, "b.x");
}

/// The commands our warnings print, run as printed by the real `nix-instantiate` / `nix` over
/// stand-ins for `<nixpkgs/nixos>` and a flake, whose containers have every hazard of real
/// ones; their output must read back with `--from-json`'s reader.
#[test]
fn the_printed_commands_run_with_real_nix_and_read_back() {
    if std::process::Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").is_none(),
            "nix-instantiate is required"
        );
        return;
    }
    let containers = r#"{ web = { autoStart = true; hostAddress = "10.0.0.1";
        config = { ... }: { }; pkgs = throw "pkgs"; path = throw "toplevel";
        nixpkgs = ./.; specialArgs = { f = x: x; }; _module = { args.f = x: x; }; }; }"#;
    let dir = tempfile::tempdir().unwrap();
    let np = dir.path().join("np/nixos");
    std::fs::create_dir_all(&np).unwrap();
    std::fs::write(
        np.join("default.nix"),
        format!("{{ configuration ? null }}: {{ config.containers = {containers}; }}"),
    )
    .unwrap();
    let flake = dir.path().join("my-flake");
    std::fs::create_dir_all(&flake).unwrap();
    // The host named, and this machine's own name for the `$(hostname)` form.
    let me = String::from_utf8(
        std::process::Command::new("hostname")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    // A name that is not a plain attribute (e.g. with dots) cannot be a NixOS host name.
    let me = if crate::nixtext::is_identifier(&me) {
        me
    } else {
        "h1".to_string()
    };
    std::fs::write(
        flake.join("flake.nix"),
        format!(
            "{{ outputs = {{ self }}: {{ nixosConfigurations.\"h.1\".config.containers = {containers}; \
             nixosConfigurations.{me}.config.containers = {containers}; }}; }}"
        ),
    )
    .unwrap();
    let commands = [
        EvalCommand::Nixos {
            configuration: None,
        },
        EvalCommand::for_config(Path::new("/etc/nixos/hosts/a b.nix")),
        EvalCommand::Flake {
            dir: flake.clone(),
            host: Some("h.1".into()),
        },
        EvalCommand::Flake {
            dir: flake.clone(),
            host: None,
        },
    ];
    let commands = commands
        .into_iter()
        .filter(|c| me != "h1" || !matches!(c, EvalCommand::Flake { host: None, .. }));
    for c in commands {
        let cmd = c.command();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .current_dir(dir.path())
            .env(
                "NIX_PATH",
                format!("nixpkgs={}", dir.path().join("np").display()),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json = std::fs::read_to_string(dir.path().join("containers.json")).unwrap();
        let facts =
            crate::legacy::eval::read_eval_json(Path::new("containers.json"), &json).unwrap();
        assert_eq!(facts.len(), 1, "{cmd}: {json}");
        assert_eq!(
            facts[0].options.keys().collect::<Vec<_>>(),
            ["autoStart", "hostAddress"],
            "{cmd}"
        );
        std::fs::remove_file(dir.path().join("containers.json")).unwrap();
    }
}

/// Every `config` (and condition) text read from every fixture host parses with the real
/// `nix-instantiate --parse`, including the combined and dotted forms. The parser also rejects
/// undefined variables, so binding exactly the reported free variables checks that none is
/// missed.
#[test]
fn every_fixture_config_text_parses_with_real_nix() {
    if std::process::Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").is_none(),
            "nix-instantiate is required"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut texts = Vec::new();
    for scenario in ["jemilsson", "golden-nix", "c0d3d", "vivlim", "cycle"] {
        for c in tree(scenario).facts {
            if let Some((Value::Expr(e), _)) = c.options.get("config") {
                texts.push((format!("{scenario}/{}", c.container), e.clone()));
            }
            if let Some(cond) = &c.condition {
                texts.push((
                    format!("{scenario}/{} condition", c.container),
                    cond.clone(),
                ));
            }
        }
    }
    let ff = read(
        "{ c, d, ... }: { containers.x = lib.mkIf c { config.a = 1; }; containers.x.config.b = lib.mkIf d 2; containers = lib.mkIf d { }; }",
    );
    for c in ff.containers {
        texts.push(("inline".into(), expr(opt(&c, "config")).clone()));
    }
    assert!(texts.len() >= 9, "{texts:?}");
    for (i, (what, e)) in texts.iter().enumerate() {
        let p = dir.path().join(format!("{i}.nix"));
        // The carried bindings, plus the names the generated file takes as arguments.
        let text = if e.free_vars.is_empty() && e.lets.is_empty() {
            e.text.clone()
        } else {
            let mut binds: String = e
                .free_vars
                .iter()
                .map(|v| format!("{v} = null; "))
                .collect();
            binds.extend(e.lets.iter().map(|l| format!("{}\n", l.text)));
            format!("let {binds}in\n{}", e.text)
        };
        std::fs::write(&p, &text).unwrap();
        let out = std::process::Command::new("nix-instantiate")
            .arg("--parse")
            .arg(&p)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_symlink_loop_in_import_paths_ends() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(".", dir.path().join("sub")).unwrap();
    std::fs::write(
        dir.path().join("x.nix"),
        "{ imports = [ ./sub/x.nix ]; containers.x.autoStart = true; }",
    )
    .unwrap();
    // The kernel's limit of 40 symlinks ends it here (MAX_FILES is the net behind it).
    let r = read_config_tree(&PlainFs, &dir.path().join("x.nix"));
    assert!(r.files_read.len() <= MAX_FILES);
    assert_eq!(names(&r), ["x"]);
    assert_eq!(codes(&r.problems), ["nix-file-unreadable"]);
}

#[test]
fn computed_names_from_let_bound_strings_are_read() {
    let ff = read(
        "let name = \"web\"; sub = \"mail\"; opt = \"autoStart\"; in {\n  containers.${name}.${opt} = true;\n  containers.\"${sub}.example\".ephemeral = true;\n}",
    );
    assert!(ff.problems.is_empty(), "{:?}", ff.problems);
    assert_eq!(opt(container(&ff, "web"), "autoStart"), &Value::Bool(true));
    assert_eq!(
        opt(container(&ff, "mail.example"), "ephemeral"),
        &Value::Bool(true)
    );
}

#[test]
fn flake_parts_hosts_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let flake = dir.path().join("flake.nix");
    std::fs::write(
        &flake,
        r#"{
  inputs.flake-parts.url = "github:hercules-ci/flake-parts";
  outputs = inputs@{ flake-parts, nixpkgs, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } {
      systems = [ "x86_64-linux" ];
      flake = {
        nixosConfigurations.box = nixpkgs.lib.nixosSystem {
          modules = [ ./box.nix ];
        };
      };
      flake.nixosConfigurations.other = nixpkgs.lib.nixosSystem { modules = [ ./other.nix ]; };
    };
}"#,
    )
    .unwrap();
    let fr = read_flake(&PlainFs, &flake, Some("box"));
    assert!(fr.problems.is_empty(), "{:#?}", fr.problems);
    assert_eq!(fr.entries, [dir.path().join("box.nix")]);
    let fr = read_flake(&PlainFs, &flake, None);
    assert_eq!(fr.hosts, ["box", "other"]);
}

#[test]
fn unreadable_module_code_that_may_define_containers_is_reported() {
    let ff = read(
        "{ lib, hosts, ... }: {\n  config = lib.mkMerge (map mkContainerModule hosts);\n  services = lib.mkMerge (map mkService hosts);\n}",
    );
    assert_eq!(codes(&ff.problems), ["nix-dynamic-containers"]);
    assert_eq!(ff.problems[0].line, Some(2));
    assert!(ff.problems[0].message.contains("mkContainerModule"));
}

// ---- fragments: files that are a piece of a configuration, and containers in nested modules --

/// Each shape, read as a module file: the problem codes (with their lines) and the containers
/// read, with the codes of each container's warnings from this reader.
#[test]
fn fragment_shapes_table() {
    struct Case {
        what: &'static str,
        src: &'static str,
        problems: &'static [(&'static str, usize)],
        containers: &'static [(&'static str, &'static [&'static str])],
    }
    let cases = [
        Case {
            what: "one container's value, a function of the host's arguments",
            src: "{ config, pkgs, ... }:\n{\n  config = import ./configuration.nix { inherit pkgs; };\n  hostBridge = \"br0\";\n  localAddress = \"10.5.20.13/24\";\n  autoStart = true;\n}\n",
            problems: &[("nix-container-fragment", 2)],
            containers: &[],
        },
        Case {
            what: "one container's value, a bare set (host network) with `with` and `let`",
            src: "{ pkgs ? import <nixpkgs> { } }:\nwith pkgs;\nlet dev = 1; in\n{\n  bindMounts.\"/run/docker.sock\".hostPath = \"/run/docker.sock\";\n  config = { ... }: { };\n}\n",
            problems: &[("nix-container-fragment", 4)],
            containers: &[],
        },
        Case {
            what: "one container's defaults, no `config`, two options",
            src: "{ config, ... }:\n{\n  ephemeral = false;\n  privateNetwork = true;\n  localAddress = null;\n}\n",
            problems: &[("nix-container-fragment", 2)],
            containers: &[],
        },
        Case {
            what: "a set of containers (literal and imported), not checkable without files",
            src: "{ config, pkgs, ... }:\n{\n  web = { privateNetwork = true; hostAddress = \"10.0.0.1\"; };\n  \"db\" = import ./db/container.nix { inherit pkgs; };\n}\n",
            problems: &[("nix-containers-set-fragment", 2)],
            containers: &[],
        },
        Case {
            what: "a set of imports whose paths say container",
            src: "{ pkgs, ... }:\n{\n  \"stubby\" = import ./stubby/container.nix { pkgs = pkgs; };\n}\n",
            problems: &[("nix-containers-set-fragment", 2)],
            containers: &[],
        },
        Case {
            what: "a factory of containers in a `rec` set of helpers",
            src: "{ lib, ... }:\nlet net = n: { privateNetwork = true; }; in\nrec {\n  pkgsList = [ ];\n  mk = keys: {\n    browser = { autoStart = true; timeoutStartSec = \"1y\"; } // (net 2);\n  };\n}\n",
            problems: &[("nix-containers-set-fragment", 3)],
            containers: &[],
        },
        Case {
            what: "a flake-parts module nesting a NixOS module",
            src: "{ config, ... }:\nlet inherit (config) flake; in\n{\n  flake.modules.nixos.devSpawn = { config, ... }: {\n    containers.dev = {\n      autoStart = true;\n      specialArgs = { inherit flake; };\n    };\n  };\n}\n",
            problems: &[],
            containers: &[("dev", &["nix-nested-containers"])],
        },
        Case {
            what: "nixosModules of a flake",
            src: "{\n  outputs = { self, nixpkgs }: {\n    nixosModules.box = { containers.box.autoStart = true; };\n    nixosModules.two = { config.containers = { a.ephemeral = true; b = { }; }; };\n  };\n}\n",
            problems: &[],
            containers: &[
                ("box", &["nix-nested-containers"]),
                ("a", &["nix-nested-containers"]),
                ("b", &["nix-nested-containers"]),
            ],
        },
        Case {
            what: "extra-container: containers computed inside a call",
            src: "{\n  outputs = { extra-container, ... }: {\n    packages.default = extra-container.lib.buildContainers {\n      config.containers =\n        builtins.listToAttrs (map f names);\n    };\n  };\n}\n",
            problems: &[("nix-dynamic-containers", 5)],
            containers: &[],
        },
        Case {
            what: "a `let` binding of a containers set that nothing uses",
            src: "{ ... }:\nlet\n  containers = { web = { privateNetwork = true; autoStart = true; }; };\nin\n{\n  networking.hostName = \"h\";\n}\n",
            problems: &[("nix-containers-not-read", 3)],
            containers: &[],
        },
        Case {
            what: "a `let` binding of a containers set that is used is read once",
            src: "{ ... }:\nlet\n  containers = { web = { privateNetwork = true; autoStart = true; }; };\nin\n{\n  inherit containers;\n  containers.db.autoStart = true;\n}\n",
            problems: &[("nix-dynamic-containers", 6)],
            containers: &[("db", &[])],
        },
        Case {
            what: "ordinary host module without containers",
            src: "{ config, pkgs, lib, ... }:\n{\n  imports = [ ];\n  networking.hostName = \"plain\";\n  nixpkgs.config.allowUnfree = true;\n  services.nginx.enable = true;\n  boot.tmp.useTmpfs = true;\n  environment.etc.\"containers/registries.conf\".text = \"\";\n}\n",
            problems: &[],
            containers: &[],
        },
        Case {
            what: "module with options and config only",
            src: "{ config, lib, ... }:\n{\n  options.my.enable = lib.mkEnableOption \"x\";\n  config = lib.mkIf config.my.enable { services.x.enable = true; };\n}\n",
            problems: &[],
            containers: &[],
        },
        Case {
            what: "flake-parts module without containers",
            src: "{ inputs, ... }:\n{\n  flake = { nixosModules.x = ./x.nix; };\n  perSystem = { pkgs, ... }: { packages.hello = pkgs.hello; };\n}\n",
            problems: &[],
            containers: &[],
        },
        Case {
            what: "sub-modules as a set of imports (paths do not say container)",
            src: "{ pkgs, ... }:\n{\n  services = import ./services.nix { inherit pkgs; };\n}\n",
            problems: &[],
            containers: &[],
        },
        Case {
            what: "OCI containers in both spellings",
            src: "{ ... }:\n{\n  virtualisation.oci-containers.containers.web = { image = \"nginx\"; autoStart = true; };\n  virtualisation = { containers.enable = true; };\n  services.x = { virtualisation = { oci-containers = { containers.db = { image = \"pg\"; autoStart = true; }; }; }; };\n}\n",
            problems: &[],
            containers: &[],
        },
        Case {
            what: "other tools' `containers` options nested in ordinary options",
            src: "{ ... }:\n{\n  programs.distrobox = { enable = true; containers.dev = { image = \"fedora\"; additional_packages = \"git\"; }; };\n  services.foo = { containers = [ \"a\" \"b\" ]; };\n  services.bar = { containers.enable = true; containers.dir = \"/x\"; };\n  services.baz = { containers = { one = { image = \"x\"; }; }; };\n}\n",
            problems: &[],
            containers: &[],
        },
        Case {
            what: "legacy-looking or computed `containers` under an ordinary option are read",
            src: "{ config, lib, ... }:\n{\n  my.hosts = { containers.web = { autoStart = true; }; };\n  my.more = { containers = lib.mapAttrs (n: v: v) config.hosts; };\n}\n",
            problems: &[("nix-dynamic-containers", 4)],
            containers: &[("web", &["nix-nested-containers"])],
        },
        Case {
            what: "a guest that defines containers itself stays the guest's",
            src: "{\n  containers.outer = {\n    privateNetwork = true;\n    config = { containers.inner.autoStart = true; };\n  };\n  containers.x.config.containers.y.autoStart = true;\n}\n",
            problems: &[],
            containers: &[("outer", &[]), ("x", &[])],
        },
    ];
    for case in &cases {
        let ff = read(case.src);
        let got: Vec<(&str, Option<usize>)> =
            ff.problems.iter().map(|w| (w.code, w.line)).collect();
        let want: Vec<(&str, Option<usize>)> =
            case.problems.iter().map(|(c, l)| (*c, Some(*l))).collect();
        assert_eq!(got, want, "{}: {:#?}", case.what, ff.problems);
        let got: Vec<(&str, Vec<&str>)> = ff
            .containers
            .iter()
            .map(|c| {
                (
                    c.container.as_str(),
                    c.warnings
                        .iter()
                        .map(|w| w.code)
                        .filter(|c| c.starts_with("nix-"))
                        .collect(),
                )
            })
            .collect();
        let want: Vec<(&str, Vec<&str>)> = case
            .containers
            .iter()
            .map(|(n, w)| (*n, w.to_vec()))
            .collect();
        assert_eq!(got, want, "{}", case.what);
        for w in &ff.problems {
            assert_eq!(w.category, Category::NeedsHuman, "{}", case.what);
            assert_eq!(w.file.as_deref(), Some(Path::new(F)), "{}", case.what);
        }
    }
}

#[test]
fn the_key_table_needs_two_distinctive_options_or_config_and_one() {
    let k = |ks: &[&str]| {
        fragment::container_keys(&ks.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    assert!(k(&["privateNetwork", "hostBridge"]).is_some());
    assert!(k(&["config", "bindMounts"]).is_some());
    assert!(k(&["config", "autoStart", "autoStart"]).is_some());
    assert!(k(&["autoStart"]).is_none());
    assert!(k(&["config", "nixpkgs", "path", "flake"]).is_none());
    assert!(k(&["config", "options", "imports"]).is_none());
    assert!(k(&["autoStart", "autoStart"]).is_none());
    // The table is exactly the legacy option set the merge knows.
    let mut table: Vec<&str> = CONTAINER_KEYS.iter().map(|(n, _)| *n).collect();
    let mut known: Vec<&str> = crate::legacy::merge::OPTION_NAMES.to_vec();
    table.sort();
    known.sort();
    assert_eq!(table, known);
}

#[test]
fn a_container_fragment_says_what_it_is_and_what_to_do() {
    let r = tree("fragment-container");
    // Through the host, the file is read as the value of containers.web.
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    let web = fact(&r, "web");
    assert_eq!(opt(web, "hostBridge"), &s("br0"));
    assert_eq!(
        expr(opt(web, "config")).text,
        "import ./configuration.nix { inherit pkgs; }"
    );
    // Given directly, it is a fragment: one warning, and its guest's imports are not followed.
    let root = fixture("fragment-container");
    let file = Path::new("/etc/nixos/containers/web/container.nix");
    let r = read_config_tree(&HostFs(&root), file);
    assert!(r.facts.is_empty());
    assert_eq!(r.files_read, [file]);
    assert_eq!(codes(&r.problems), ["nix-container-fragment"]);
    let w = &r.problems[0];
    assert_eq!(w.line, Some(2));
    assert_eq!(w.file.as_deref(), Some(file));
    for part in [
        "/etc/nixos/containers/web/container.nix:2:",
        "definition of ONE container",
        "config, hostBridge, localAddress, autoStart, privateNetwork, additionalCapabilities",
        "`containers.<name> = import /etc/nixos/containers/web/container.nix …;`",
        "with --config",
        // The host's command, not one evaluating the fragment as a host.
        EVAL_COMMAND_NIXOS,
        FROM_JSON_COMMAND,
    ] {
        assert!(w.message.contains(part), "{part}: {}", w.message);
    }
}

#[test]
fn a_containers_set_file_is_read_with_names_when_every_entry_is_a_container() {
    let root = fixture("fragment-set");
    let host = read_config_tree(&HostFs(&root), Path::new(F));
    assert!(host.problems.is_empty(), "{:#?}", host.problems);
    assert_eq!(names(&host), ["dns", "proxy"]);

    let file = Path::new("/etc/nixos/containers/containers.nix");
    let r = read_config_tree(&HostFs(&root), file);
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(names(&r), ["dns", "proxy"]);
    // The same facts as through the host, plus the note.
    for name in ["dns", "proxy"] {
        let direct = fact(&r, name);
        let via_host = fact(&host, name);
        assert_eq!(direct.options, via_host.options, "{name}");
        assert_eq!(
            codes(&direct.warnings),
            ["nix-containers-set-read"],
            "{name}"
        );
        let w = &direct.warnings[0];
        assert_eq!(w.category, Category::ChangedMeaning);
        assert!(
            w.message.contains("containers.nix:2:") && w.message.contains("`containers = import"),
            "{}",
            w.message
        );
    }
    assert_eq!(opt(fact(&r, "dns"), "localAddress6"), &s("fd00:53::53/64"));
    assert_eq!(
        attrs(&attrs(opt(fact(&r, "proxy"), "bindMounts"))["/var/lib/acme"])["hostPath"],
        s("/srv/acme")
    );
}

#[test]
fn a_containers_set_with_an_unreadable_entry_is_only_warned_about() {
    let root = fixture("fragment-set-missing");
    let r = read_config_tree(
        &HostFs(&root),
        Path::new("/etc/nixos/containers/containers.nix"),
    );
    assert!(r.facts.is_empty());
    assert_eq!(codes(&r.problems), ["nix-containers-set-fragment"]);
    assert!(
        r.problems[0].message.contains("(a, b)"),
        "{}",
        r.problems[0].message
    );
    assert_eq!(r.problems[0].line, Some(3));
}

#[test]
fn a_factory_of_containers_is_warned_about_with_the_names() {
    let root = fixture("fragment-factory");
    let r = read_config_tree(&HostFs(&root), Path::new("/etc/nixos/factory.nix"));
    assert!(r.facts.is_empty());
    assert_eq!(codes(&r.problems), ["nix-containers-set-fragment"]);
    let w = &r.problems[0];
    assert!(
        w.message.contains("(mk.browser, mk.games-net)"),
        "{}",
        w.message
    );
    assert_eq!(w.line, Some(15));
}

#[test]
fn an_ordinary_host_without_containers_gets_no_fragment_warning() {
    let r = tree("fragment-not-a-set");
    assert!(r.facts.is_empty(), "{:?}", names(&r));
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(r.files_read.len(), 3, "{:?}", r.files_read);
}

#[test]
fn containers_of_nested_modules_are_read_with_a_note_saying_where() {
    let root = fixture("nested-modules");
    let r = read_config_tree(&HostFs(&root), Path::new("/etc/nixos/parts.nix"));
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(names(&r), ["dev"]);
    let dev = fact(&r, "dev");
    // Names of the file's outer `let` resolve.
    assert_eq!(opt(dev, "hostBridge"), &s("br0"));
    assert_eq!(line(dev, "hostBridge"), Some(13));
    // The `mkIf` around the nested module is the container's condition.
    assert_eq!(dev.condition.as_ref().unwrap().text, "config.dev.enable");
    assert_eq!(codes(&dev.warnings), ["nix-nested-containers"]);
    let w = &dev.warnings[0];
    assert_eq!(w.line, Some(9));
    assert!(
        w.message
            .contains("inside `flake.modules.nixos.devSpawn`, a module nested in this file"),
        "{}",
        w.message
    );

    // flake.nix given with --config: the module among the outputs is read; extra-container's
    // computed set is a warning that says where it sits.
    let r = read_config_tree(&HostFs(&root), Path::new("/etc/nixos/flake.nix"));
    assert_eq!(names(&r), ["box"]);
    assert_eq!(opt(fact(&r, "box"), "localAddress"), &s("10.233.1.2"));
    assert!(
        fact(&r, "box").warnings[0]
            .message
            .contains("inside `outputs` → `nixosModules.box`")
    );
    assert_eq!(codes(&r.problems), ["nix-dynamic-containers"]);
    let w = &r.problems[0];
    assert_eq!(w.line, Some(22));
    // A flake.nix given with --config names the flake command, not `<nixpkgs/nixos>`.
    assert!(
        w.message
            .contains("eval --json '/etc/nixos#nixosConfigurations.$(hostname).config.containers'")
            || w.message
                .contains("\"/etc/nixos#nixosConfigurations.$(hostname).config.containers\""),
        "{}",
        w.message
    );
    assert!(!w.message.contains("<nixpkgs/nixos>"), "{}", w.message);
    assert!(
        w.message.contains(
            "inside `outputs` → `packages.x86_64-linux.default` → a call of `buildContainers`"
        ),
        "{}",
        w.message
    );
}

#[test]
fn fragment_fixtures_parse_with_real_nix() {
    if std::process::Command::new("nix-instantiate")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("NIXOS_NSPAWN_REQUIRE_REAL_TOOLS").is_none(),
            "nix-instantiate is required"
        );
        return;
    }
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/nix");
    let mut n = 0;
    for scenario in [
        "fragment-container",
        "fragment-set",
        "fragment-set-missing",
        "fragment-not-a-set",
        "fragment-factory",
        "nested-modules",
    ] {
        let mut dirs = vec![base.join(scenario)];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "nix") {
                    let out = std::process::Command::new("nix-instantiate")
                        .arg("--parse")
                        .arg(&p)
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}: {}",
                        p.display(),
                        String::from_utf8_lossy(&out.stderr)
                    );
                    n += 1;
                }
            }
        }
    }
    assert!(n >= 14, "{n}");
}

#[test]
fn a_set_of_imports_that_are_not_containers_is_not_a_containers_set() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("host.nix"),
        "{ pkgs, ... }:\n{\n  tools = import ./container-tools.nix { inherit pkgs; };\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("container-tools.nix"),
        "{ pkgs }: { podman = pkgs.podman; enable = true; }",
    )
    .unwrap();
    // Without the files, the paths make it a guess, and the guess is said.
    let ff = read_nix_file(
        &dir.path().join("host.nix"),
        "{ a = import ./containers/a.nix; }",
    )
    .unwrap();
    assert_eq!(codes(&ff.problems), ["nix-containers-set-fragment"]);
    // With them, the file it names is not a container: nothing to say.
    let r = read_config_tree(&PlainFs, &dir.path().join("host.nix"));
    assert!(r.facts.is_empty());
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
}

#[test]
fn a_flake_given_as_config_is_read_as_a_flake_with_its_nested_modules() {
    let root = fixture("flake-host");
    let r = read_config_tree(&HostFs(&root), Path::new("/etc/nixos/flake.nix"));
    // Every host's modules are followed (not only what flake.nix itself says).
    let mut n = names(&r);
    n.sort();
    assert_eq!(n, ["builder", "inline", "vault"]);
    assert!(codes(&r.problems).contains(&"nix-flake-several-hosts"));
    // The inline host module is read once, as the host's, without a nested-module note.
    assert!(
        fact(&r, "inline")
            .warnings
            .iter()
            .all(|w| w.code != "nix-nested-containers")
    );

    // A module among the outputs that no host uses is still read, with its note.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("flake.nix"),
        "{\n  outputs = { self, nixpkgs }: {\n    nixosConfigurations.h = nixpkgs.lib.nixosSystem {\n      modules = [ { containers.a.autoStart = true; } ];\n    };\n    nixosModules.extra = { containers.b.ephemeral = true; };\n  };\n}\n",
    )
    .unwrap();
    let r = read_config_tree(&PlainFs, &dir.path().join("flake.nix"));
    assert!(r.problems.is_empty(), "{:#?}", r.problems);
    assert_eq!(names(&r), ["a", "b"]);
    assert!(
        fact(&r, "a").warnings.is_empty(),
        "{:#?}",
        fact(&r, "a").warnings
    );
    assert_eq!(codes(&fact(&r, "b").warnings), ["nix-nested-containers"]);
}

/// Item 3 of issue 9: a name the reader cannot carry says why (which limit it is): a parameter
/// of a function around the module (with the function and its line), a binding built by
/// `a.b = …` pieces; module arguments are not among them (they reach the generated file).
#[test]
fn names_that_cannot_be_carried_say_why() {
    let ff = read(
        r#"{ serverName }: { config, inputs, ... }:
let
  net.gw = "10.0.0.1";
in
{
  containers.x = {
    config = { networking.hostName = serverName; networking.nameservers = [ net.gw ]; x = inputs.y; };
  };
}"#,
    );
    let e = expr(opt(container(&ff, "x"), "config"));
    let why = |n: &str| {
        e.why_free
            .iter()
            .find(|(m, _)| m == n)
            .map(|(_, w)| w.as_str())
            .unwrap_or_else(|| panic!("no reason for {n}: {:?}", e.why_free))
    };
    assert!(
        why("serverName").contains("a parameter of the function `{ serverName }: …` at line 1"),
        "{}",
        why("serverName")
    );
    assert!(
        why("net").contains("`net.… = …` bindings at line 3"),
        "{}",
        why("net")
    );
    assert!(e.module_args.contains(&"inputs".to_string()));
    assert!(!e.why_free.iter().any(|(n, _)| n == "inputs"));
}

/// Issue 9 (s11 of the sample): a list built with `++` and `lib.optionals` over a condition
/// the source states (through a function's literal argument) is data, not an expression.
#[test]
fn concatenated_lists_with_stated_conditions_are_data() {
    let ff = read(
        r#"{ lib, ... }:
let
  cfg = { priority = "critical"; gpu = false; };
in
{
  containers.x.extraFlags = [ "--bind=/dev/nvidia0" ]
    ++ lib.optionals (cfg.priority == "critical") [ "--property=CPUWeight=200" ]
    ++ lib.optional (cfg.priority != "critical") "--property=CPUWeight=50"
    ++ lib.optionals cfg.gpu [ "--bind=/dev/dri" ];
}"#,
    );
    let x = container(&ff, "x");
    assert_eq!(
        opt(x, "extraFlags"),
        &Value::List(vec![
            s("--bind=/dev/nvidia0"),
            s("--property=CPUWeight=200")
        ])
    );
    assert!(x.warnings.is_empty(), "{:?}", x.warnings);
    // A condition the source does not state keeps the whole value an expression.
    let ff = read(
        r#"{ config, lib, ... }: { containers.x.extraFlags = [ "-U" ] ++ lib.optionals config.y.enable [ "--bind=/a" ]; }"#,
    );
    let x = container(&ff, "x");
    assert!(matches!(opt(x, "extraFlags"), Value::Expr(_)));
    assert_eq!(codes(&x.warnings), ["nix-unresolved-value"]);
}
