# Build one imperative container from a container file, with the same options and the same
# rendering as a declarative `nixos.containers.instances.<name>`.
#
# A container file is an attribute set (or a module) with the instance options:
#
#   {
#     nixpkgs = <nixpkgs>;
#     system-config = { pkgs, ... }: { services.nginx.enable = true; };
#     network = { };
#     forwardPorts = [ { hostPort = 8080; containerPort = 80; } ];
#     activation.strategy = "reload";
#   }
#
# Unlike declarative containers, `nixpkgs` has no default (there is no host configuration to
# take it from) and `network` defaults to null (the host's network), as the RFC says.
#
# `activation.strategy` defaults to "dynamic", as for declarative containers: `nixos-nspawn
# update` compares the installed `.nspawn` and network units with the new ones and reloads when
# only `Parameters=` (the system) changed, restarts otherwise. (The RFC's text says imperative
# containers restart by default because its script could not tell the difference; this one can.)
#
#   nix-build eval-container.nix --arg file ./c.nix --argstr name web -A toplevel
#   nix-instantiate --eval --strict --json eval-container.nix --arg file ./c.nix \
#     --argstr name web -A files
#
# Arguments:
#   file      the container file (path), or `container` the same value directly
#   name      the machine name
#   nixpkgs   overrides the file's `nixpkgs`
#   system    platform of the container (default: the evaluating machine's)
#   lib       nixpkgs' lib to evaluate the options with (default: the container's nixpkgs')
#   zones     `nixos.containers.zones`-like data for a container in a zone (gateway fallback)
#   prebuilt  a system already built (store path, `nixos-nspawn create --profile`): rendered
#             into `Parameters=` instead of building system-config
#
# Result:
#   toplevel       the container's NixOS system (a derivation with a real nixpkgs)
#   config         the container's evaluated NixOS configuration
#   instance       the evaluated instance options
#   nspawn         text of /etc/systemd/nspawn/<name>.nspawn
#   nspawnSettings the same as { execConfig; filesConfig; networkConfig; }
#   networkUnits   host-side networkd units: file name → text (write to /etc/systemd/network)
#   preStart       the script to run before the first start (creates /var/lib/machines/<name>)
#   reloadScript   body of the reload script (the CLI runs it for `update --reload`)
#   dropin         text of a systemd-nspawn@<name>.service drop-in, or "" when none is needed
#   json           JSON description of the container (options without system-config)
#   files          { "<name>.nspawn" = text; "data.json" = json; <network units>;
#                    "dropin.conf" = dropin (only when one is needed); }
{
  file ? null,
  container ? if file == null then throw "eval-container.nix: pass --arg file ./container.nix" else import file,
  name,
  nixpkgs ? null,
  system ? builtins.currentSystem,
  lib ? null,
  zones ? { },
  prebuilt ? null,
}:

let
  raw = if builtins.isFunction container then null else container;
  nixpkgsPath =
    if nixpkgs != null then
      nixpkgs
    else if raw != null && raw ? nixpkgs then
      raw.nixpkgs
    else if prebuilt != null then
      # Only nixpkgs' lib is needed to evaluate the options of a prebuilt system.
      <nixpkgs>
    else
      throw "eval-container.nix: container ${name}: set `nixpkgs = <nixpkgs>;` in the container file or pass --arg nixpkgs";
  lib' = if lib != null then lib else import (nixpkgsPath + "/lib");

  I = import ./instance.nix { lib = lib'; };

  instanceModule = import ./instance-options.nix { lib = lib'; };

  eval = lib'.evalModules {
    modules = [
      instanceModule
      {
        _module.args.name = name;
        nixpkgs = lib'.mkForce nixpkgsPath;
        # Imperative default (RFC 0108): the host's network unless the file says otherwise.
        network = lib'.mkDefault null;
        activation.strategy = lib'.mkDefault "dynamic";
      }
      (
        if raw != null then
          {
            _file = if file != null then toString file else "<container>";
            imports = [ (removeAttrs raw [ "nixpkgs" ]) ];
          }
        else
          container
      )
    ];
  };
  inst = eval.config;

  zoneHostAddresses =
    if inst.network != null && inst.network.zone != null then
      (zones.${inst.network.zone} or { }).hostAddresses or [ ]
    else
      [ ];

  sys = I.evalSystem name inst zoneHostAddresses system;
  toplevel = if prebuilt != null then prebuilt else sys.config.system.build.toplevel;

  nspawnSettings = I.nspawnSettings name inst toplevel;
  nspawn = I.units.nspawnText nspawnSettings;

  networkUnits = lib'.mapAttrs' (n: v: lib'.nameValuePair "${n}.network" (I.units.networkText v)) (
    if inst.network == null then { } else I.hostNetworks name inst
  );

  failed = lib'.filter (a: !a.assertion) [
    {
      assertion = I.validName name;
      message = "invalid container name \"${name}\": use 1 to 63 letters, digits and \"-\", not starting or ending with \"-\" (no \".\" or \"_\")";
    }
    {
      assertion = inst.forwardPorts == [ ] || I.hasVeth inst;
      message = "container ${name}: forwardPorts need `network = { };` (a private network with a veth)";
    }
  ];
  checked =
    if failed == [ ] then
      x: x
    else
      throw "eval-container.nix:\n${lib'.concatMapStringsSep "\n" (a: "- ${a.message}") failed}";

  # The drop-in for systemd-nspawn@<name>.service, when one is needed (timeout, restart
  # policy, credentials); "" otherwise. The CLI installs it as
  # /run/systemd/system/systemd-nspawn@<name>.service.d/ (or /etc/…); machinectl
  # enable/disable handles autoStart.
  serviceConfig =
    lib'.optionalAttrs (inst.timeoutStartSec != null) { TimeoutStartSec = inst.timeoutStartSec; }
    // lib'.optionalAttrs (inst.restart != null) { Restart = inst.restart; }
    // lib'.optionalAttrs (inst.credentials != [ ]) {
      ExecStart = [
        ""
        (I.templateExecStart "systemd-nspawn" inst)
      ];
    };
  dropin =
    if serviceConfig == { } then
      ""
    else
      I.units.serviceText {
        unitConfig = { };
        environment = { };
        inherit serviceConfig;
      };

  json = builtins.toJSON (
    I.describe name inst
    // {
      declarative = false;
      toplevel = "${toplevel}";
    }
  );
in
checked {
  inherit
    toplevel
    nspawn
    nspawnSettings
    networkUnits
    json
    ;
  inherit (sys) config;
  inherit dropin;
  instance = inst;
  preStart = I.preStart name;
  reloadScript = I.reloadScriptText {
    inherit name;
    sed = "sed";
    systemdRun = "systemd-run";
    inherit (inst.activation) reloadScript;
  };
  files = {
    "${name}.nspawn" = nspawn;
    "data.json" = json;
  }
  // networkUnits
  // lib'.optionalAttrs (dropin != "") { "dropin.conf" = dropin; };
}
