from twisted.application.service import ServiceMaker

mailnet = ServiceMaker("mailnet", "mailnet.tap", "An email service: ESMTP, submission and POP3", "mailnet")
