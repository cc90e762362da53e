# -*- coding: utf-8 -*-
# Copyright: bpfdeploy contributors
# Apache License 2.0 (see LICENSE in the bpfdeploy repository)
"""Action plugin of bpfdeploy.ebpf.probe: ships the controller-side manifest with the module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.bpfdeploy.ebpf.plugins.plugin_utils.shipping import ShippingAction


class ActionModule(ShippingAction):
    pass
