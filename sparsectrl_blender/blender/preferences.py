"""Add-on preferences: the server token lives here, in Blender's user preferences, never in a .blend (bpy)."""

from __future__ import annotations

import bpy

from ..core.request import login_name, owner_name

# The add-on's own module (this file lives in its blender/ folder): "bl_ext.user_default.sparsectrl_previs"
# when installed as an extension. Preferences belong to it, not to the sub-package.
ADDON_ID = __package__.rpartition(".")[0]


class SparseCtrlPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    token: bpy.props.StringProperty(
        name="Server token",
        subtype="PASSWORD",
        description="Your own token from the studio's server ([auth] artists), or the server's shared token "
        "(server.token / SPARSECTRL_TOKEN); needed when it runs on another machine",
    )

    artist: bpy.props.StringProperty(
        name="Your name",
        description="Sent with every job: a shared server takes artists' jobs in turn, so one artist's batch "
        "cannot hold up another's preview; empty: your login name, or the name your own token carries",
    )

    def draw(self, context):
        self.layout.prop(self, "token")
        self.layout.label(text="Only needed for a server started with a token (e.g. on a shared GPU box).")
        self.layout.label(text="With your own token the server knows your name: leave the name empty.")
        self.layout.prop(self, "artist")


def token() -> str:
    """The token from the preferences; empty when none is set or the add-on was registered without them."""
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    return addon.preferences.token if addon is not None and addon.preferences is not None else ""


def owner() -> str | None:
    """Who the jobs are from: the preferences' name, else the login name (core/request.py owner_name)."""
    return artist_name() or owner_name(login_name())


def artist_name() -> str | None:
    """The name set in the preferences (None: none), sent as the owner even where a token names one."""
    addon = bpy.context.preferences.addons.get(ADDON_ID)
    name = addon.preferences.artist if addon is not None and addon.preferences is not None else ""
    return owner_name(name)


CLASSES = (SparseCtrlPreferences,)
