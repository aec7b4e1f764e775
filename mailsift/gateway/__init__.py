"""Gateway integration: what lets mailsift sit in a real mail path.

MTAs do not speak REST: Postfix and Sendmail reach a content filter through the milter
protocol (:mod:`.milter`), and Postfix asks a policy service at ``RCPT`` time through
its policy delegation protocol (:mod:`.policy`). Both are thin translators in front of
the HTTP service (:mod:`.client`): the decisions stay in the service, so several
gateways share one service and one state.
"""
