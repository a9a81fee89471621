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

  nodes.client =
    { pkgs, ... }:
    {
      environment.systemPackages = [ pkgs.curl ];
    };

  testScript = ''
    ${builtins.readFile ./helpers.py}

    start_all()
    wait_for_container(machine, "web")
    machine.succeed("grep -qx 'Port=tcp:8080:80' /etc/systemd/nspawn/web.nspawn")
    inside_eventually(machine, "web", "systemctl is-active nginx.service")
    inside_eventually(machine, "web", "ip -4 addr show host0 | grep -q inet")
    client.wait_for_unit("network.target")
    client.wait_until_succeeds("curl -sf http://machine:8080/ | grep -q from-the-container")
  '';
}
