# forwardPorts: a port of the host is forwarded to the container (nspawn Port=, nftables).
{ ... }:
{
  name = "nixos-nspawn-port-forward";

  nodes.machine = {
    imports = [ ./common.nix ];
    networking.firewall.allowedTCPPorts = [ 8080 ];
    nixos.containers.instances.web = {
      network = { };
      forwardPorts = [
        {
          hostPort = 8080;
          containerPort = 80;
        }
      ];
      system-config =
        { pkgs, ... }:
        {
          services.nginx.enable = true;
          services.nginx.virtualHosts.default.locations."/".return = "200 'from-the-container'";
          networking.firewall.allowedTCPPorts = [ 80 ];
        };
    };
  };

  nodes.client = { };

  testScript = ''
    start_all()
    machine.wait_for_unit("systemd-nspawn@web.service")
    machine.succeed("grep -qx 'Port=tcp:8080:80' /etc/systemd/nspawn/web.nspawn")
    machine.wait_until_succeeds("systemd-run -M web --wait --pipe -- systemctl is-active nginx.service")
    machine.wait_until_succeeds("systemd-run -M web --wait --pipe -- ip -4 addr show host0 | grep -q inet")
    client.wait_for_unit("network.target")
    client.wait_until_succeeds("curl -sf http://machine:8080/ | grep -q from-the-container")
  '';
}
