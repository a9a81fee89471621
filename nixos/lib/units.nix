# Text renderers for systemd unit files, written to produce byte-for-byte the same text as
# nixpkgs does for the subset of options this project uses:
#
# - `attrsToSection` / `toOption`: nixos/lib/systemd-lib.nix
# - `nspawnText`: nixos/modules/system/boot/systemd/nspawn.nix (`instanceToUnit`)
# - `networkText` / `netdevText`: nixos/lib/systemd-network-units.nix (`networkToUnit`,
#   `netdevToUnit`; only the sections listed below)
# - `serviceText`: nixos/lib/systemd-lib.nix (`serviceToUnit` + `commonUnitText`)
#
# Used by nixos/lib/eval-container.nix (imperative containers get the same files a declarative
# host would) and by the test stubs in nixos/tests/stub/. Pure: no pkgs, no builds.
{ lib }:

let
  inherit (lib)
    concatLists
    concatMapStrings
    concatStrings
    concatStringsSep
    isList
    mapAttrsToList
    optionalString
    ;
in
rec {
  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;

  attrsToSection =
    as:
    concatStrings (
      concatLists (
        mapAttrsToList (
          name: value:
          map (x: ''
            ${name}=${toOption x}
          '') (if isList value then value else [ value ])
        ) as
      )
    );

  # `{ execConfig; filesConfig; networkConfig; }` → the text nixpkgs puts in
  # /etc/systemd/nspawn/<name>.nspawn.
  nspawnText = def: ''
    [Exec]
    ${attrsToSection def.execConfig}

    [Files]
    ${attrsToSection def.filesConfig}

    [Network]
    ${attrsToSection def.networkConfig}
  '';

  commonMatchText =
    def:
    optionalString (def.matchConfig or { } != { }) ''
      [Match]
      ${attrsToSection def.matchConfig}
    '';

  # Sections supported: Match, Link, Network (+ address, gateway, dns, routes), DHCPv4,
  # DHCPServer, IPv6SendRA, extraConfig. Same order and spacing as nixpkgs.
  networkText =
    def:
    let
      get = n: def.${n} or (if lib.hasSuffix "Config" n then { } else [ ]);
      lines = key: values: optionalString (values != [ ]) ''
        ${concatStringsSep "\n" (map (s: "${key}=${s}") values)}
      '';
    in
    commonMatchText def
    + optionalString (get "linkConfig" != { }) ''
      [Link]
      ${attrsToSection def.linkConfig}
    ''
    + ''
      [Network]
    ''
    + attrsToSection (get "networkConfig")
    + lines "Address" (get "address")
    + lines "Gateway" (get "gateway")
    + lines "DNS" (get "dns")
    + "\n"
    + concatMapStrings (x: ''
      [Route]
      ${attrsToSection x.routeConfig}
    '') (get "routes")
    + optionalString (get "dhcpV4Config" != { }) ''
      [DHCPv4]
      ${attrsToSection def.dhcpV4Config}
    ''
    + optionalString (get "dhcpServerConfig" != { }) ''
      [DHCPServer]
      ${attrsToSection def.dhcpServerConfig}
    ''
    + optionalString (get "ipv6SendRAConfig" != { }) ''
      [IPv6SendRA]
      ${attrsToSection def.ipv6SendRAConfig}
    ''
    + (def.extraConfig or "");

  netdevText =
    def:
    commonMatchText def
    + ''
      [NetDev]
      ${attrsToSection def.netdevConfig}
    ''
    + optionalString (def.bridgeConfig or { } != { }) ''
      [Bridge]
      ${attrsToSection def.bridgeConfig}
    ''
    + optionalString (def.macvlanConfig or { } != { }) ''
      [MACVLAN]
      ${attrsToSection def.macvlanConfig}
    ''
    + (def.extraConfig or "");

  # A service (or a drop-in for one, which nixpkgs renders the same way).
  # `def` = { unitConfig; environment; serviceConfig; wantedBy; reloadIfChanged;
  # restartIfChanged; stopIfChanged; } with unitConfig already holding X-*-Triggers.
  serviceText =
    def:
    ''
      [Unit]
      ${attrsToSection def.unitConfig}
    ''
    + ''
      [Service]
    ''
    + concatMapStrings (
      n:
      optionalString (def.environment.${n} != null) "Environment=${builtins.toJSON "${n}=${def.environment.${n}}"}\n"
    ) (builtins.attrNames def.environment)
    + (
      if def.reloadIfChanged or false then
        ''
          X-ReloadIfChanged=true
        ''
      else if !(def.restartIfChanged or true) then
        ''
          X-RestartIfChanged=false
        ''
      else
        ""
    )
    + optionalString (!(def.stopIfChanged or true)) ''
      X-StopIfChanged=false
    ''
    + attrsToSection def.serviceConfig
    + optionalString (def.wantedBy or [ ] != [ ]) ''

      [Install]
      WantedBy=${concatStringsSep " " def.wantedBy}
    '';
}
