from django.urls import path

from . import network_views, storage_views, views

app_name = "ves"
urlpatterns = [
    path("", views.ve_list, name="list"),
    path("new/", views.ve_create, name="create"),
    path("bulk/", views.ve_bulk, name="bulk"),
    path("<int:ctid>/", views.ve_detail, name="detail"),
    path("<int:ctid>/status/", views.ve_status, name="status"),
    path("<int:ctid>/console/", views.ve_console, name="console"),
    path("<int:ctid>/apply-plan/", views.ve_apply_plan, name="apply-plan"),
    path("<int:ctid>/snapshots/", storage_views.ve_snapshots, name="snapshots"),
    path("<int:ctid>/snapshots/new/", storage_views.ve_snapshot_take, name="snapshot-take"),
    path("<int:ctid>/snapshots/<str:name>/rollback/", storage_views.ve_snapshot_rollback, name="snapshot-rollback"),
    path("<int:ctid>/snapshots/<str:name>/delete/", storage_views.ve_snapshot_delete, name="snapshot-delete"),
    path("<int:ctid>/backups/", storage_views.ve_backups, name="backups"),
    path("<int:ctid>/backups/new/", storage_views.ve_backup_now, name="backup-now"),
    path("<int:ctid>/backups/<str:backup_id>/restore/", storage_views.ve_backup_restore, name="backup-restore"),
    path("<int:ctid>/backups/<str:backup_id>/delete/", storage_views.ve_backup_delete, name="backup-delete"),
    path("<int:ctid>/backups/<str:backup_id>/restore-new/", storage_views.ve_backup_restore_new, name="backup-restore-new"),
    path("backups/", storage_views.kept_backups, name="kept-backups"),
    path("backups/<int:backup_id>/delete/", storage_views.kept_backup_delete, name="kept-backup-delete"),
    path("backups/<int:backup_id>/restore-new/", storage_views.kept_backup_restore_new, name="kept-backup-restore-new"),
    path("<int:ctid>/network/", network_views.ve_network, name="network"),
    path("<int:ctid>/network/add/", network_views.ve_address_add, name="address-add"),
    path("<int:ctid>/network/remove/", network_views.ve_address_remove, name="address-remove"),
    path("<int:ctid>/network/reverse-dns/", network_views.ve_reverse_dns, name="reverse-dns"),
    path("<int:ctid>/network/ssh-keys/", network_views.ve_ssh_push, name="ssh-push"),
    path("<int:ctid>/firewall/", network_views.ve_firewall, name="firewall"),
    path("<int:ctid>/firewall/change/", network_views.ve_firewall_change, name="firewall-change"),
    path("ssh-keys/", network_views.ssh_keys, name="ssh-keys"),
    path("ssh-keys/<int:key_id>/delete/", network_views.ssh_key_delete, name="ssh-key-delete"),
    path("pools/", network_views.ip_pools, name="pools"),
    path("pools/<int:pool_id>/delete/", network_views.ip_pool_delete, name="pool-delete"),
    path(
        "<int:ctid>/<str:action>/",
        views.ve_action,
        name="action",
    ),
]
