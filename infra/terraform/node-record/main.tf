# node-record: a record of the cluster's nodes (names, addresses, roles) in Terraform's state,
# kept in Tempered's state store; offline (the built-in terraform_data resource only). Run it
# at stage after-ready to keep an inventory other Terraform code can read
# (`terraform_remote_state` with the http backend), or copy it as the start of a module that
# registers the nodes elsewhere (a CMDB, a monitoring system):
#
#   {"name": "inventory", "module": "node-record", "stage": "after-ready",
#    "variables": {"cluster": "{{ cluster.name }}", "nodes": "{{ members | tojson }}"}}

variable "cluster" {
  type        = string
  description = "The cluster's name."
}

variable "nodes" {
  type = list(object({
    name       = string
    address    = optional(string, "")
    role       = optional(string, "")
    machine_id = optional(string, "")
    ready      = optional(bool, false)
  }))
  default     = []
  description = "The members, as the template context's `members` gives them."
}

locals {
  nodes = { for n in var.nodes : n.name => n }
}

resource "terraform_data" "nodes" {
  input = {
    cluster = var.cluster
    nodes   = [for name in sort(keys(local.nodes)) : local.nodes[name]]
  }
}

output "node_count" {
  value       = length(terraform_data.nodes.output.nodes)
  description = "How many nodes the record holds."
}

output "names" {
  value       = join(",", [for n in terraform_data.nodes.output.nodes : n.name])
  description = "The nodes' names, sorted, comma-separated."
}

output "control_plane" {
  value       = join(",", [for n in terraform_data.nodes.output.nodes : n.address if contains(["master-prime", "master"], n.role)])
  description = "The control-plane nodes' addresses, comma-separated."
}
