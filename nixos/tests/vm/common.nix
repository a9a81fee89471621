# Shared host settings for the VM tests: networkd on the host, enough memory for containers.
{ pkgs, ... }:
{
  networking.useNetworkd = true;
  networking.useDHCP = false;
  # The firewall stays as a real host has it (no trusted ve-+/vz-+): the containers' DHCP
  # leases must come through the port the module opens (issue 8 #3).
  networking.firewall.enable = true;
  environment.systemPackages = [ pkgs.curl ];
  virtualisation.memorySize = 2048;
  virtualisation.writableStore = true;
}
