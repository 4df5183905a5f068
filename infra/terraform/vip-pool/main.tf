# vip-pool: the cluster's control-plane VIP, chosen from a pool of addresses (offline: the
# built-in terraform_data resource only). A task maps its `endpoint` output onto the cluster's
# control_plane_endpoint, at stage before-bootstrap, so the master-prime's kubeadm init uses it:
#
#   {"name": "vip", "module": "vip-pool", "stage": "before-bootstrap",
#    "variables": {"cluster": "{{ cluster.name }}", "pool": ["192.0.2.10", "192.0.2.11"]},
#    "outputs": {"control_plane_endpoint": "endpoint"}}
#
# The choice is deterministic (a hash of the cluster's name picks one address of the sorted
# pool) and kept once made: the state remembers it, and a later change of the pool does not
# move a VIP the cluster's certificates already name. Destroy releases it.

variable "cluster" {
  type        = string
  description = "The cluster's name: what the choice is a hash of."
}

variable "pool" {
  type        = list(string)
  description = "The addresses the VIP may be (IPv4 or IPv6)."

  validation {
    condition     = length(var.pool) > 0
    error_message = "The pool is empty: give at least one address."
  }
  validation {
    condition     = alltrue([for a in var.pool : can(cidrhost("${a}/${strcontains(a, ":") ? 128 : 32}", 0))])
    error_message = "Every entry of the pool must be an IP address."
  }
}

variable "port" {
  type        = number
  default     = 6443
  description = "The API server's port behind the VIP."
}

locals {
  pool   = sort(distinct(var.pool))
  chosen = local.pool[parseint(substr(sha256(var.cluster), 0, 8), 16) % length(local.pool)]
}

resource "terraform_data" "vip" {
  input = {
    cluster = var.cluster
    address = local.chosen
  }

  lifecycle {
    ignore_changes = [input] # allocated once: a new pool does not move it
  }
}

locals {
  address = terraform_data.vip.output.address
}

output "address" {
  value       = local.address
  description = "The VIP."
}

output "endpoint" {
  value       = strcontains(local.address, ":") ? "[${local.address}]:${var.port}" : "${local.address}:${var.port}"
  description = "host:port of the control plane behind the VIP (what control_plane_endpoint takes)."
}
