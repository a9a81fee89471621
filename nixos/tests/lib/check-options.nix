# The option paths a module's `config` defines that no option declares. The test stubs evaluate
# with `_module.check = false` (the rest of NixOS is not there to declare what nixpkgs' own
# modules define), so a definition of nixos/ on an option that does not exist would go unseen;
# this walks nixos/'s own definitions (through mkMerge, mkIf, mkDefault, mkOrder) against the
# evaluated `options` instead. Submodules (systemd.services.<name>, ...) check themselves.
{ lib }:
options: definitions:
let
  # A definition as the list of plain attribute sets it contributes.
  pieces =
    v:
    if lib.isAttrs v && v ? _type then
      if v._type == "merge" then
        lib.concatMap pieces v.contents
      else if v._type == "if" || v._type == "override" || v._type == "order" then
        pieces v.content
      else
        [ ]
    else if lib.isAttrs v then
      [ v ]
    else
      [ ];
  walk =
    prefix: opts: def:
    lib.concatMap (
      piece:
      lib.concatMap (
        name:
        let
          path = prefix ++ [ name ];
        in
        if name == "_module" then
          [ ]
        else if !(opts ? ${name}) then
          [ (lib.showOption path) ]
        else if lib.isOption opts.${name} then
          [ ]
        else
          walk path opts.${name} piece.${name}
      ) (builtins.attrNames piece)
    ) (pieces def);
in
walk [ ] options definitions
