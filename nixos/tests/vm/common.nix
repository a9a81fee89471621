# Shared host settings for the VM tests: networkd on the host, enough memory for containers.
{ pkgs, ... }:
{
  networking.useNetworkd = true;
  networking.useDHCP = false;
  # Containers reach the outside through the host; the test VMs have no uplink anyway.
  networking.firewall.trustedInterfaces = [
    "ve-+"
    "vz-+"
    "vb-+"
  ];
  environment.systemPackages = [ pkgs.curl ];
  virtualisation.memorySize = 2048;
  virtualisation.writableStore = true;
}
