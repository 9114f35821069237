from django.urls import path

from . import views

app_name = "ves"
urlpatterns = [
    path("", views.ve_list, name="list"),
    path("new/", views.ve_create, name="create"),
    path("bulk/", views.ve_bulk, name="bulk"),
    path("<int:ctid>/", views.ve_detail, name="detail"),
    path("<int:ctid>/status/", views.ve_status, name="status"),
    path("<int:ctid>/console/", views.ve_console, name="console"),
    path("<int:ctid>/apply-plan/", views.ve_apply_plan, name="apply-plan"),
    path("<int:ctid>/snapshots/", views.ve_snapshots, name="snapshots"),
    path("<int:ctid>/snapshots/new/", views.ve_snapshot_take, name="snapshot-take"),
    path("<int:ctid>/snapshots/<str:name>/rollback/", views.ve_snapshot_rollback, name="snapshot-rollback"),
    path("<int:ctid>/snapshots/<str:name>/delete/", views.ve_snapshot_delete, name="snapshot-delete"),
    path("<int:ctid>/backups/", views.ve_backups, name="backups"),
    path("<int:ctid>/backups/new/", views.ve_backup_now, name="backup-now"),
    path("<int:ctid>/backups/<str:backup_id>/restore/", views.ve_backup_restore, name="backup-restore"),
    path("<int:ctid>/backups/<str:backup_id>/delete/", views.ve_backup_delete, name="backup-delete"),
    path("<int:ctid>/backups/<str:backup_id>/restore-new/", views.ve_backup_restore_new, name="backup-restore-new"),
    path("backups/", views.kept_backups, name="kept-backups"),
    path("backups/<int:backup_id>/delete/", views.kept_backup_delete, name="kept-backup-delete"),
    path("backups/<int:backup_id>/restore-new/", views.kept_backup_restore_new, name="kept-backup-restore-new"),
    path("<int:ctid>/network/", views.ve_network, name="network"),
    path("<int:ctid>/network/add/", views.ve_address_add, name="address-add"),
    path("<int:ctid>/network/remove/", views.ve_address_remove, name="address-remove"),
    path("<int:ctid>/network/reverse-dns/", views.ve_reverse_dns, name="reverse-dns"),
    path("<int:ctid>/network/ssh-keys/", views.ve_ssh_push, name="ssh-push"),
    path("<int:ctid>/firewall/", views.ve_firewall, name="firewall"),
    path("<int:ctid>/firewall/change/", views.ve_firewall_change, name="firewall-change"),
    path("ssh-keys/", views.ssh_keys, name="ssh-keys"),
    path("ssh-keys/<int:key_id>/delete/", views.ssh_key_delete, name="ssh-key-delete"),
    path("pools/", views.ip_pools, name="pools"),
    path("pools/<int:pool_id>/delete/", views.ip_pool_delete, name="pool-delete"),
    path(
        "<int:ctid>/<str:action>/",
        views.ve_action,
        name="action",
    ),
]
