{
  description = "nixos-nspawn: migrate NixOS hosts from nixos-container to systemd-nspawn + networkd (NixOS RFC 0108), and the nixos.containers module";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Evaluate a host with the module and one of the evaluation cases, on real nixpkgs.
      evalCase =
        pkgs: case:
        (lib.nixosSystem {
          inherit (pkgs.stdenv.hostPlatform) system;
          modules = [
            self.nixosModules.default
            case
            {
              boot.loader.grub.enable = false;
              fileSystems."/".device = "/dev/null";
              system.stateVersion = lib.trivial.release;
            }
          ];
        });
    in
    {
      nixosModules.default = ./nixos;

      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "nixos-nspawn";
          version = (lib.importTOML ./Cargo.toml).package.version;
          # Everything tracked: the tests need fixtures/ and nixos/ next to the sources.
          src = lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;
          # `create`/`update` evaluate nixos/lib/eval-container.nix; the binary finds it in
          # share/nixos-nspawn/nixos next to itself.
          postInstall = ''
            mkdir -p $out/share/nixos-nspawn
            cp -r nixos $out/share/nixos-nspawn/
          '';
          # The Nix and systemd tests need root, nix-instantiate and systemd-nspawn; in the
          # sandbox they print "skipped: …" and pass. The VM tests below cover the module.
          meta = {
            description = "Migrate NixOS hosts from nixos-container to systemd-nspawn + networkd";
            license = lib.licenses.mit;
            mainProgram = "nixos-nspawn";
            platforms = lib.platforms.linux;
          };
        };
      });

      # nixos/lib/eval-container.nix, for `nixos-nspawn create/update` of imperative containers.
      lib.evalContainer = import ./nixos/lib/eval-container.nix;

      checks = forAllSystems (
        pkgs:
        let
          vmTests = import ./nixos/tests {
            inherit pkgs;
            module = self.nixosModules.default;
            package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          };
          # Module evaluation on real nixpkgs: every case evaluates without failed assertions
          # and its host system builds (containers included).
          evalChecks = lib.mapAttrs' (
            name: file:
            lib.nameValuePair "eval-${name}" (evalCase pkgs file).config.system.build.toplevel
          ) {
            default-network = ./nixos/tests/cases/default-network.nix;
            zone = ./nixos/tests/cases/zone.nix;
            static = ./nixos/tests/cases/static.nix;
            ports-binds = ./nixos/tests/cases/ports-binds.nix;
            hostnet = ./nixos/tests/cases/hostnet.nix;
            everything = ./nixos/tests/cases/everything.nix;
          };
        in
        vmTests
        // evalChecks
        // {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
          # The offline evaluation tests (render.nix: the module with nixpkgs' own systemd,
          # nspawn, networkd, firewall and networking modules) with nix itself.
          render = pkgs.runCommand "nixos-nspawn-render" { nativeBuildInputs = [ pkgs.nix ]; } ''
            export NIX_STATE_DIR=$TMPDIR/nix NIX_STORE_DIR=$TMPDIR/store HOME=$TMPDIR
            export NIXPKGS=${nixpkgs}
            for c in default-network zone static ports-binds hostnet; do
              nix-instantiate --eval --read-write-mode --strict --json ${./nixos}/tests/render.nix \
                --arg configuration ${./nixos}/tests/cases/$c.nix > $c.json
              grep -q '"assertions":\[\]' $c.json
            done
            nix-instantiate --eval --read-write-mode --strict --json ${./nixos}/tests/render.nix \
              --arg configuration ${./nixos}/tests/cases/bad.nix > bad.json
            ! grep -q '"assertions":\[\]' bad.json
            mkdir $out; cp *.json $out/
          '';
          # Option documentation renders (every option has a description and type).
          option-docs =
            (pkgs.nixosOptionsDoc {
              options =
                (lib.evalModules {
                  modules = [
                    { _module.check = false; }
                    ./nixos/module.nix
                    { _module.args.pkgs = pkgs; }
                  ];
                }).options.nixos;
            }).optionsJSON;
        }
      );

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
