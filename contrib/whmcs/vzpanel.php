<?php
/**
 * vzpanel provisioning module for WHMCS (a skeleton: docs/billing.md describes the API it calls).
 *
 * Install as modules/servers/vzpanel/vzpanel.php. Server: the panel's host name, "Secure" ticked, the
 * token of a panel admin (API tokens, scope full) as Access Hash (or as the password). Product: module
 * "vzpanel"; configuration option 1 = the panel's plan, option 2 = the OS template.
 *
 * Every call is keyed by "whmcs-<serviceid>": WHMCS may repeat a call (a cron retry, a second click) and the
 * panel answers it the same and changes nothing.
 */

if (!defined('WHMCS')) {
    die('This file cannot be accessed directly');
}

function vzpanel_MetaData()
{
    return [
        'DisplayName' => 'vzpanel',
        'APIVersion' => '1.1',
        'RequiresServer' => true,
    ];
}

function vzpanel_ConfigOptions()
{
    return [
        'Plan' => ['Type' => 'text', 'Size' => '32', 'Description' => 'the panel plan name (e.g. small)'],
        'OS template' => ['Type' => 'text', 'Size' => '32', 'Default' => 'debian-12',
                          'Description' => 'an OS template of the panel (GET /api/templates/)'],
    ];
}

/** The service's external id: WHMCS's service id, never reused. */
function vzpanel_external_id(array $params)
{
    return 'whmcs-' . (int) $params['serviceid'];
}

/**
 * POST $body to the billing call $call of the service; return the decoded answer, or throw with the panel's
 * words ("detail", and per field "errors") for WHMCS to show.
 */
function vzpanel_call(array $params, $call, array $body = [])
{
    $scheme = !empty($params['serversecure']) ? 'https' : 'http';
    $host = $params['serverhostname'] ?: $params['serverip'];
    $port = !empty($params['serverport']) ? ':' . (int) $params['serverport'] : '';
    $token = $params['serveraccesshash'] ?: $params['serverpassword'];
    $url = sprintf('%s://%s%s/api/v1/billing/services/%s/%s/', $scheme, $host, $port,
                   rawurlencode(vzpanel_external_id($params)), $call);

    $payload = json_encode((object) $body);
    $ch = curl_init($url);
    curl_setopt_array($ch, [
        CURLOPT_POST => true,
        CURLOPT_POSTFIELDS => $payload,
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => 60,
        CURLOPT_HTTPHEADER => ['Authorization: Token ' . trim($token), 'Content-Type: application/json',
                               'Accept: application/json'],
    ]);
    $raw = curl_exec($ch);
    $status = curl_getinfo($ch, CURLINFO_HTTP_CODE);
    $error = curl_error($ch);
    curl_close($ch);

    // Without the token: WHMCS's module log masks what is passed as the last argument.
    logModuleCall('vzpanel', $call, $body, $raw, $raw, [$token]);
    if ($raw === false) {
        throw new Exception('The panel could not be reached: ' . $error);
    }
    $answer = json_decode($raw, true);
    if ($status < 200 || $status >= 300) {
        $why = is_array($answer) && isset($answer['detail']) ? $answer['detail'] : "HTTP $status";
        if (is_array($answer) && !empty($answer['errors'])) {
            foreach ($answer['errors'] as $field => $messages) {
                $why .= "; $field: " . implode(' ', (array) $messages);
            }
        }
        throw new Exception($why);
    }
    return $answer;
}

function vzpanel_CreateAccount(array $params)
{
    try {
        $client = $params['clientsdetails'];
        $answer = vzpanel_call($params, 'create', [
            'customer' => [
                // by e-mail: one panel customer for all the client's services
                'email' => $client['email'],
                'first_name' => $client['firstname'],
                'last_name' => $client['lastname'],
                // WHMCS's own password for the service: kept by WHMCS, so nothing is lost if an answer is
                'password' => $params['password'],
            ],
            'plan' => $params['configoption1'],
            'template' => $params['configoption2'] ?: 'debian-12',
            'hostname' => $params['domain'],
        ]);
        // The first address (and the panel's user name) onto the service, for the client area and e-mails.
        $update = ['username' => $answer['customer']['username']];
        if (!empty($answer['addresses'])) {
            $update['dedicatedip'] = $answer['addresses'][0]['address'];
        }
        localAPI('UpdateClientProduct', array_merge(['serviceid' => $params['serviceid']], $update));
        return 'success';
    } catch (Exception $e) {
        return $e->getMessage();
    }
}

function vzpanel_SuspendAccount(array $params)
{
    try {
        $reason = trim((string) ($params['suspendreason'] ?? ''));
        vzpanel_call($params, 'suspend', $reason !== '' ? ['reason' => substr($reason, 0, 150)] : []);
        return 'success';
    } catch (Exception $e) {
        return $e->getMessage();
    }
}

function vzpanel_UnsuspendAccount(array $params)
{
    try {
        vzpanel_call($params, 'unsuspend');
        return 'success';
    } catch (Exception $e) {
        return $e->getMessage();
    }
}

function vzpanel_TerminateAccount(array $params)
{
    try {
        vzpanel_call($params, 'terminate', ['delete_backups' => true]);
        return 'success';
    } catch (Exception $e) {
        return $e->getMessage();
    }
}

function vzpanel_ChangePackage(array $params)
{
    try {
        vzpanel_call($params, 'change-plan', ['plan' => $params['configoption1']]);
        return 'success';
    } catch (Exception $e) {
        return $e->getMessage();
    }
}

function vzpanel_TestConnection(array $params)
{
    try {
        // An id no service has: 404 means the panel answered and took the token; 401/403 mean it did not.
        vzpanel_call($params, 'suspend');
    } catch (Exception $e) {
        if (strpos($e->getMessage(), 'no billing service') !== false) {
            return ['success' => true, 'error' => ''];
        }
        return ['success' => false, 'error' => $e->getMessage()];
    }
    return ['success' => true, 'error' => ''];
}
