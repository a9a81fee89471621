# Shared host settings for the VM tests: networkd on the host, enough memory for containers.
{ lib, ... }:
{
  networking.useNetworkd = true;
  networking.useDHCP = false;
  # Containers reach the outside through the host; the test VMs have no uplink anyway.
  networking.firewall.trustedInterfaces = [
    "ve-+"
    "vz-+"
    "vb-+"
  ];
  virtualisation.memorySize = 2048;
  virtualisation.writableStore = true;
}
