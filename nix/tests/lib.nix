# nixpkgs' real `lib` (the module system, lib.types, lib.fileset, ...) from
# ../shared/vendor/nixpkgs-lib beside the repository (see its README), for
# the evaluation tests. nixpkgs itself cannot be fetched in CI; its `lib`
# is vendored there, unmodified.
#
# One backport: Debian's nix-bin is Nix 2.8, and the vendored lib targets
# Nix >= 2.18 (lib/minfeatures.nix). Of the builtins it calls, 2.8 lacks only
# `builtins.readFileType` (Nix 2.14), which lib.filesystem.pathType aliases
# and lib.fileset uses; it is supplied through lib.extend, nixpkgs' own
# override mechanism, with the same results (readDir reports the same four
# type names). `builtins.warn` (2.23) has a fallback inside lib itself.
let
  vendored = ../../../shared/vendor/nixpkgs-lib/lib;
  real =
    if builtins.pathExists (vendored + "/default.nix") then
      import vendored
    else
      throw "nix/tests/lib.nix: nixpkgs' lib not found at ${toString vendored} (expected ../shared/vendor/nixpkgs-lib beside the repository)";
  readFileType =
    path:
    if toString path == "/" then
      "directory"
    else
      (builtins.readDir (dirOf path)).${baseNameOf path}
        or (throw "lib.filesystem.pathType: ${toString path} does not exist");
in
if builtins ? readFileType then
  real
else
  real.extend (
    _final: prev: {
      filesystem = prev.filesystem // {
        pathType = readFileType;
      };
    }
  )
