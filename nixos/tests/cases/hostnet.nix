# network = null: the host's network; no networkd needed on the host.
{
  nixos.containers.instances.plain = {
    system-config.services.openssh.enable = true;
    activation.strategy = "none";
  };
}
