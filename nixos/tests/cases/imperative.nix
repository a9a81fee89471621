# RFC 0108 "Imperative containers": the file `nixos-nspawn create imperative ./file.nix` takes.
# `nixpkgs` points at the test stub here; a real file says `nixpkgs = <nixpkgs>;`.
{
  nixpkgs = ../stub/fake-nixpkgs;
  system-config =
    { pkgs, ... }:
    {
      services.nginx.enable = true;
      networking.firewall.allowedTCPPorts = [ 80 ];
    };
  network = { };
  forwardPorts = [
    {
      hostPort = 8080;
      containerPort = 80;
    }
  ];
}
